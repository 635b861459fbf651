"""`tunelab serve` from the command line (here beside the served runs it needs, not in tests/cli): the
ready line, --api-key from TUNELAB_API_KEY, --watch, and bad input as one `error:` line with exit code 2."""
from __future__ import annotations

import shutil
import socket
import time

import openai
import pytest

from .conftest import ServeProcess


def test_serve_prints_url_and_watches(served_runs, tmp_path):
    watched = tmp_path / "runs"
    watched.mkdir()
    process = ServeProcess(served_runs["lora-a"], "--watch", watched, env={"TUNELAB_API_KEY": "k3y"})
    try:
        assert process.ready_line.startswith("serving ") and process.url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=process.url, api_key="nope", timeout=30, max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with openai.OpenAI(base_url=process.url, api_key="k3y", timeout=60, max_retries=0) as client:
            assert "lora-a" in {m.id for m in client.models.list().data}
            shutil.copytree(served_runs["lora-b"], watched / "lora-new")
            deadline = time.monotonic() + 60
            while "lora-new" not in {m.id for m in client.models.list().data}:
                assert time.monotonic() < deadline, "the watched run was not served within 60 s"
                time.sleep(0.5)
            reply = client.completions.create(model="lora-new", prompt="Snow is", max_tokens=2)
            assert reply.usage.completion_tokens >= 1
    finally:
        stderr = process.close()
    assert "watch: serving" in stderr and "Traceback" not in stderr


def _one_error(rc, out, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input(cli, tmp_path, served_runs):
    _one_error(*cli("serve", tmp_path / "missing"), "does not exist")
    _one_error(*cli("serve", tmp_path), "not a run directory")
    _one_error(*cli("serve"), "at least one RUN")
    _one_error(*cli("serve", served_runs["lora-a"], "--watch", tmp_path / "nowhere"), "--watch")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        _one_error(*cli("serve", served_runs["lora-a"], "--port", port), f"127.0.0.1:{port}", "--port")
    _one_error(*cli("serve", "--base", "no-such-model-anywhere", "--port", "0"))


def test_max_jobs_below_one_is_one_error_line(cli):
    _one_error(*cli("serve", "--base", "tiny-llama", "--max-jobs", "0"), "--max-jobs")
