"""`tunelab serve` over HTTP: 1 vs 8 concurrent streaming clients on smollm2-135m, and 8 with two LoRA
adapters mixed among the requests (one shared forward per step on the one loaded base).

  python bench/serve_throughput.py [--model smollm2-135m] [--clients 8] [--requests 2] [--tokens 32]

Two quick LoRA sft runs on data/instruct/dolly_subset.jsonl (max_steps 5) are trained once into
--work (reused when present); the server is a real `tunelab serve RUN RUN --base MODEL` subprocess on
127.0.0.1. Each client sends --requests streaming chat requests one after another (greedy, exactly
--tokens tokens each via ignore_eos, a different dolly instruction each). Figures:
  tok/s      all completion tokens / wall time of the scenario (model loading excluded)
  TTFT       request sent -> first content chunk
  per-token  gap between consecutive content chunks of one reply (one chunk ~ one token)
Issue 15's targets: 8 concurrent >= 3x the tok/s of 1; mixing adapters costs <= 20% against 8 on the base.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOLLY = REPO / "data/instruct/dolly_subset.jsonl"
sys.path.insert(0, str(REPO / "src"))


def lora_run(model: str, work: Path, name: str, seed: int) -> Path:
    from tunelab.training.engine import train

    run_dir = work / "runs" / name
    if (run_dir / "summary.json").is_file():
        return run_dir
    cfg = {"name": name, "model": model, "stage": "sft",
           "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
           "data": {"train": str(DOLLY), "max_rows": 40, "eval_fraction": 0.0},
           "train": {"max_steps": 5, "batch_size": 2, "max_length": 128, "lr": 1e-3, "seed": seed,
                     "save_steps": 0, "eval_before": False, "logging_steps": 5},
           "output_dir": str(work / "runs")}
    return Path(train(cfg, quiet=True))


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *args, "--port", "0"], stdout=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, line.split()[-1]


async def one_request(client, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    sent, arrivals, usage = time.perf_counter(), [], None
    async with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    return {"ttft": arrivals[0] - sent if arrivals else None, "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "tokens": usage["completion_tokens"]}


async def scenario(url: str, models: list[str], clients: int, requests: int, prompts: list[str], tokens: int) -> dict:
    import httpx2 as httpx

    async def client_loop(c: int, client) -> list[dict]:
        out = []
        for r in range(requests):
            k = c * requests + r
            out.append(await one_request(client, models[k % len(models)], prompts[k % len(prompts)], tokens))
        return out

    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=httpx.Limits(max_connections=clients + 4)) as client:
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client_loop(c, client) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "ttft": [r["ttft"] for r in results if r["ttft"]],
            "gaps": [g for r in results for g in r["gaps"]], "wall": wall}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="Requests per client, sent one after another.")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunelab-serve-bench")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunelab.core.machine import describe_machine, machine_line

    runs = [lora_run(args.model, args.work, f"serve-lora-{i}", seed=i) for i in (1, 2)]
    prompts = [json.loads(line)["instruction"] for line in DOLLY.read_text().splitlines()[:64]]
    proc, url = start_server([*map(str, runs), "--base", args.model, "--max-batch-size", str(max(16, args.clients))])
    try:
        asyncio.run(scenario(url, [args.model], 2, 1, prompts, 4))  # warm-up: first forwards, allocator
        plans = [("1 client, base", [args.model], 1, args.requests * 2),
                 (f"{args.clients} clients, base", [args.model], args.clients, args.requests),
                 (f"{args.clients} clients, base+2 LoRA", [args.model, runs[0].name, runs[1].name], args.clients,
                  args.requests)]
        rows = [(name, asyncio.run(scenario(url, models, c, r, prompts, args.tokens))) for name, models, c, r in plans]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    m = describe_machine()
    print(f"\ntunelab serve, {args.model}, {args.tokens} tokens per reply, streaming chat over HTTP")
    print(f"machine: {machine_line(m)}")
    print(f"{'scenario':<28} {'tok/s':>7}  {'TTFT ms p50/p90/p99':>22}  {'per-token ms p50/p90/p99':>26}")
    for name, r in rows:
        ttft = "/".join(f"{pct(r['ttft'], q):.0f}" for q in (50, 90, 99))
        gaps = "/".join(f"{pct(r['gaps'], q):.0f}" for q in (50, 90, 99))
        print(f"{name:<28} {r['tok_s']:7.1f}  {ttft:>22}  {gaps:>26}")
    one, many, mixed = (r["tok_s"] for _, r in rows)
    print(f"\n{args.clients} concurrent / 1: {many / one:.2f}x (target >= 3x)")
    print(f"mixing adapters: {100 * (1 - mixed / many):+.1f}% cost vs base only (target <= 20%)")


if __name__ == "__main__":
    main()
