"""The served world: tiny-llama runs (two LoRA sft runs on one base, a classifier, a reward model) trained
once per session, and a real uvicorn server over them on 127.0.0.1 (a free port), shut down at the end."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory) -> dict[str, Path]:
    """{id: run dir}: lora-a and lora-b (sft on tiny-llama), cls (classify), rm (reward); trained once per
    session by served_runs.trained, shared with the engine and registry tests."""
    from .served_runs import trained

    root = tmp_path_factory.getbasetemp() / "served"
    root.mkdir(exist_ok=True)
    return {"lora-a": trained("lora-a", root), "lora-b": trained("lora-b", root),
            "cls": trained("classify", root), "rm": trained("reward", root)}


class ServerThread:
    """uvicorn in a background thread on a socket bound to 127.0.0.1:0; ``url`` ends in /v1."""

    def __init__(self, state):
        from tunelab.serve.app import create_app
        from tunelab.serve.server import bind, make_server, url_of

        self.state = state
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.ready = threading.Event()
        self.server = make_server(create_app(state), on_ready=self.ready.set)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the server did not start within 30 s"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        if self.thread.is_alive():
            # Once (1 run in 5, on a loaded machine) the fuzz server was still shutting down 30 s after
            # should_exit; uvicorn's second Ctrl-C (force_exit) skips waiting for connections and tasks.
            # Say where it waited, so that the cause can be found, and fail only if even that hangs.
            import warnings

            stacks = thread_stacks()
            self.server.force_exit = True
            self.thread.join(timeout=30)
            warnings.warn(f"the server needed force_exit to stop; its threads 30 s after should_exit:\n{stacks}")
        self.sock.close()
        assert not self.thread.is_alive(), f"the server thread did not stop; its threads:\n{thread_stacks()}"


def thread_stacks() -> str:
    """Every live thread's Python stack (what a server that would not stop was waiting on)."""
    import sys
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame))}"
                     for ident, frame in sys._current_frames().items())


@pytest.fixture(scope="session")
def serve_state(served_runs):
    """Registry + running engine over every served run (base tiny-llama served too)."""
    from tunelab.serve.server import ServeOptions, build_state

    runs = [f"{name}={path}" for name, path in served_runs.items()]  # ids as the tests name them
    state = build_state(ServeOptions(runs=runs, base="tiny-llama", max_context=256))
    yield state
    state.engine.close()


@pytest.fixture(scope="session")
def server(serve_state):
    running = ServerThread(serve_state)
    yield running
    running.close()


@pytest.fixture
def client(server):
    import openai

    with openai.OpenAI(base_url=server.url, api_key="unused", timeout=60, max_retries=0) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``tunelab serve ARGS --port 0`` in a subprocess; ``url`` from its ready line; stopped on close()."""

    def __init__(self, *args, env: dict | None = None, timeout: float = 180):
        import os
        import subprocess
        import sys
        import time

        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *map(str, args), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.url = None
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line[0] or "http://" not in line[0]:
            self.close()
            raise AssertionError(f"serve did not print its URL within {timeout} s: {line[0]!r}\n"
                                 f"{self.proc.stderr.read()[-3000:]}")
        self.ready_line = line[0].strip()
        self.url = self.ready_line.split()[-1]
        self.pid = self.proc.pid
        self._started = time.monotonic()

    def rss_kib(self) -> int:
        for row in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
        raise AssertionError("no VmRSS")

    def close(self) -> str:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.stderr.read()
