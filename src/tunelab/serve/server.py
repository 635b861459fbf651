"""Run ``tunelab serve``: check the options, bind the socket, load the models, start the engine, the
``--watch`` poller and uvicorn; print one line with the URL once requests are answered."""
from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import TunelabError
from .app import ServerState, create_app


@dataclass
class ServeOptions:
    runs: list[str] = field(default_factory=list)  # run directories, each optionally NAME=DIR
    base: str | None = None
    host: str = "127.0.0.1"  # this machine only, unless asked
    port: int = 8000
    api_key: str | None = None
    watch: Path | None = None
    watch_interval: float = 2.0  # seconds between polls of --watch
    max_batch_size: int = 16
    max_context: int | None = None
    data_dir: Path | None = None
    max_jobs: int = 1  # fine-tuning jobs trained at once


def parse_runs(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """``[DIR or NAME=DIR]`` -> (dirs, {dir: name}); every DIR must be a run directory."""
    from ..runs.open import is_run_dir

    runs, names = [], {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item and not Path(item).exists() else ("", "", item)
        if not Path(path).exists():
            raise TunelabError(f"serve: run directory {path} does not exist")
        if not is_run_dir(path):
            raise TunelabError(f"serve: {path} is not a run directory (no config.yaml); "
                               "serve a plain model with --base MODEL")
        runs.append(path)
        if name:
            names[path] = name
    return runs, names


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads so a taken port fails at once."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise TunelabError(f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                           "is another server using the port? choose one with --port") from None
    return sock


def check_options(options: ServeOptions) -> tuple[list[str], dict[str, str]]:
    """Everything that can be checked before a port is taken or a model loads; returns parse_runs()."""
    runs, names = parse_runs(options.runs)
    if not runs and options.base is None:
        raise TunelabError("serve: give at least one RUN directory, or --base MODEL")
    if options.watch is not None and not Path(options.watch).is_dir():
        raise TunelabError(f"serve: --watch {options.watch} is not a directory")
    if options.max_batch_size < 1:
        raise TunelabError(f"serve: --max-batch-size must be at least 1 (got {options.max_batch_size})")
    if options.max_context is not None and options.max_context < 2:
        raise TunelabError(f"serve: --max-context must be at least 2 tokens (got {options.max_context})")
    return runs, names


def build_state(options: ServeOptions) -> ServerState:
    """The registry (every run and base loaded), the running engine and, with --data-dir, the jobs service."""
    from .engine import Engine
    from .registry import Registry

    runs, names = check_options(options)
    registry = Registry(runs, base=options.base, names=names)
    engine = Engine(registry, max_batch_size=options.max_batch_size)
    engine.start()
    state = ServerState(registry=registry, engine=engine, api_key=options.api_key, max_context=options.max_context)
    if options.data_dir is not None:
        from .jobs import JobService

        state.jobs = JobService(options.data_dir, registry=registry, max_concurrent=options.max_jobs)
        state.jobs.start()  # re-queues what a previous server left running; serves every succeeded job
    return state


class Watcher:
    """Polls a directory; every finished run directory in it (one level down) not yet served is added.

    A run that fails to load is reported once on stderr and not retried until its summary.json changes."""

    def __init__(self, registry, directory: Path, interval: float = 2.0, log=None):
        self.registry, self.directory, self.interval = registry, Path(directory), interval
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._tried: dict[Path, float] = {}  # run dir -> summary.json mtime when last tried
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[str]:
        """One pass; returns the ids added."""
        from ..runs.open import is_run_dir

        served = {m.run_dir.resolve() for m in self.registry.models() if m.run_dir is not None}
        added = []
        try:
            children = sorted(p for p in self.directory.iterdir() if p.is_dir())
        except OSError as exc:
            self.log(f"watch: cannot list {self.directory} ({exc.strerror or exc})")
            return added
        for child in children:
            summary = child / "summary.json"
            if not is_run_dir(child) or not summary.is_file():
                continue  # not a run, or still training
            stamp = summary.stat().st_mtime
            if child.resolve() in served or self._tried.get(child) == stamp:
                continue
            self._tried[child] = stamp
            try:
                added.append(self.registry.add(child).id)
                self.log(f"watch: serving {child} as '{added[-1]}'")
            except TunelabError as exc:
                self.log(f"watch: skipped {child}: {exc}")
            except Exception as exc:  # a broken run must not stop the watcher
                self.log(f"watch: skipped {child}: {type(exc).__name__}: {exc}")
        return added

    def start(self) -> "Watcher":
        self._thread = threading.Thread(target=self._run, name="tunelab-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def make_server(app, log_level: str = "warning", on_ready=None):
    """A uvicorn server that calls ``on_ready()`` once it accepts connections."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if on_ready is not None and not self.should_exit:
                on_ready()

    config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5)
    return _Server(config)


def serve(options: ServeOptions) -> None:
    """Block serving until interrupted; shuts the engine and watcher down on the way out."""
    check_options(options)  # bad paths fail before the port is taken or any model loads
    sock = bind(options.host, options.port)
    state = watcher = None
    try:
        from ..core import console
        from ..training.progress import library_output

        with library_output(console.level()):  # no "Loading weights" bars or deprecation warnings at start
            state = build_state(options)
        app = create_app(state)
        if options.watch is not None:
            watcher = Watcher(state.registry, options.watch, options.watch_interval).start()
        count = len(state.registry.models())
        server = make_server(app, on_ready=lambda: print(f"serving {count} model{'s' * (count != 1)} at "
                                                         f"{url_of(sock)}", flush=True))
        server.run(sockets=[sock])
    finally:
        if watcher is not None:
            watcher.close()
        if state is not None and state.jobs is not None:
            state.jobs.close()  # stops training; a running job resumes when the server starts again
        if state is not None and state.engine is not None:
            state.engine.close()
        sock.close()


def wait_ready(url: str, timeout: float = 60.0, api_key: str | None = None) -> None:
    """Poll ``GET {url}/models`` until it answers (for tests and benchmarks)."""
    import httpx2 as httpx  # what the openai client depends on

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/models", headers=headers, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TunelabError(f"serve: {url} did not answer within {timeout} s")
        time.sleep(0.2)
