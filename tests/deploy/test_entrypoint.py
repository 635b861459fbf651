"""The container's entrypoint and healthcheck, run as they are but outside a container (no Docker engine here):
settings from environment variables, a tiny trained run in the runs directory, a free port on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package ships on
import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
START_TIMEOUT = 180  # s: loading the run's model on a loaded 2-core machine; far less on its own


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path: Path, **settings) -> dict:
    """This checkout's tunelab as the container's `python3 -m tunelab` (the venv's python first on PATH)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNELAB_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), TUNELAB_HOST="127.0.0.1", **settings)
    return env


def _healthy(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def runs_dir(trained_run, tmp_path):
    """A runs volume as the container sees it: one finished LoRA run (no checkpoints) and the index file."""
    runs = tmp_path / "runs"
    shutil.copytree(trained_run("sft", "lora"), runs / "my-run", ignore=shutil.ignore_patterns("checkpoints"))
    (runs / "runs.sqlite").write_bytes(b"")  # not a run: ignored
    return runs


def test_entrypoint_serves_the_runs_volume(runs_dir, tmp_path):
    port = _free_port()
    env = _env(tmp_path, TUNELAB_RUNS_DIR=str(runs_dir), TUNELAB_PORT=str(port), TUNELAB_API_KEY="k3y",
               TUNELAB_MAX_CONTEXT="128")
    assert _healthy(env).returncode == 1  # nothing listens yet: unhealthy, not an error of the script
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while _healthy(env).returncode != 0:
            log.seek(0)
            assert process.poll() is None, f"the entrypoint exited with {process.returncode}:\n{log.read()}"
            assert time.monotonic() < deadline, f"not healthy within {START_TIMEOUT} s:\n{log.read()}"
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer k3y"}
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401  # the key from TUNELAB_API_KEY
        models = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()
        assert "my-run" in [m["id"] for m in models["data"]]  # (its base rides along as a model of its own)
        reply = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60, json={
            "model": "my-run", "messages": [{"role": "user", "content": "What colour is snow?"}],
            "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model"] == "my-run" and body["usage"]["completion_tokens"] >= 1
        too_long = httpx.post(f"{url}/v1/completions", headers=headers, timeout=60, json={
            "model": "my-run", "prompt": "x", "max_tokens": 200})  # TUNELAB_MAX_CONTEXT=128 reached serve
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # what `docker stop` sends
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            pytest.fail("the server did not stop within 60 s of SIGTERM")
        log.close()
    # exec'd, so serve itself got the signal: uvicorn shuts down gracefully, then re-raises SIGTERM to exit by it
    assert process.returncode in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()


def test_entrypoint_with_nothing_to_serve_is_a_one_line_error(tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    proc = subprocess.run([str(ENTRYPOINT)], env=_env(tmp_path, TUNELAB_RUNS_DIR=str(empty)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: entrypoint: nothing to serve") and proc.stderr.count("\n") == 1
    assert str(empty) in proc.stderr
    proc = subprocess.run([str(ENTRYPOINT)], env=_env(tmp_path, TUNELAB_RUNS_DIR=str(tmp_path / "missing")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and proc.stderr.count("\n") == 1


def test_entrypoint_passes_serve_errors_through(runs_dir, tmp_path):
    """A bad setting reaches `tunelab serve`, which refuses it in one line before loading anything."""
    proc = subprocess.run([str(ENTRYPOINT)], env=_env(tmp_path, TUNELAB_RUNS_DIR=str(runs_dir),
                                                      TUNELAB_PORT="70000"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "--port" in proc.stderr
