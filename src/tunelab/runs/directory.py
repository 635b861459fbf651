"""The run directory — the contract later tooling relies on — and the index of runs.

run_dir/
  config.yaml      fully resolved config
  metrics.jsonl    one JSON object per logged step / eval
  train.log        the same records as the Trainer prints them (`tunelab train -v` shows them too)
  summary.json     written last: its presence means the run finished
  loss.png         train/eval loss curves
  tokenizer/       the tokenizer
  adapter/ | model/ | ...   weights, written by the method's save()
  checkpoints/     Trainer checkpoints (for --resume); each is written under checkpoints/.staging/
                   and renamed into place once complete, so a checkpoint-N directory is never half-written
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from ..core.errors import TunelabError

INDEX_FILE = "runs.sqlite"


def check_writable(directory: Path) -> None:
    """Can ``directory`` be created (or written, if it exists)? Tried for real in its nearest existing
    ancestor, since permission bits do not tell: root passes os.access() but cannot write under /proc."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TunelabError(f"output directory {directory} is not writable: it is a file, not a directory")
    probe_dir = directory
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise TunelabError(f"output directory {directory} is not writable: {probe_dir} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tunelab-probe-", dir=probe_dir))
    except OSError as exc:
        raise TunelabError(f"output directory {directory} is not writable: cannot create anything in "
                           f"{probe_dir} ({exc.strerror or type(exc).__name__})") from None


STAGING = ".staging"  # checkpoints/.staging/checkpoint-N: a checkpoint being written
_DELETING = ".deleting-"  # checkpoints/.deleting-checkpoint-N-...: a checkpoint being removed


def _step(path: Path) -> int | None:
    name = path.name
    return int(name[len("checkpoint-"):]) if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() else None


def _complete(path: Path) -> bool:
    """A checkpoint-N directory is complete once renamed into place; trainer_state.json is written last
    (checkpoints from before atomic saves have nothing else to go by)."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_dir()


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest (lowest step) first."""
    found = [p for p in Path(checkpoints_dir).glob("checkpoint-*") if _step(p) is not None and _complete(p)]
    return sorted(found, key=_step)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: never one being written (those live in checkpoints/.staging)
    nor one torn by a kill before checkpoints were atomic (no readable trainer_state.json)."""
    checkpoints = complete_checkpoints(Path(run_dir) / "checkpoints")
    return checkpoints[-1] if checkpoints else None


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint so that no kill can leave it looking complete: rename it away, then delete."""
    doomed = path.with_name(f"{_DELETING}{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Make a fully written checkpoint visible: flush it to disk, then rename it to its final name."""
    staged, final = Path(staged), Path(final)
    _fsync_tree(staged)
    if final.exists():  # the same step saved again, or a torn pre-atomic leftover: replace it
        _remove(final)
    os.rename(staged, final)
    _fsync_dir(final.parent)
    try:
        staged.parent.rmdir()  # the staging directory, now empty
    except OSError:
        pass


def rotate_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (by step); remove every other checkpoint-* directory."""
    checkpoints_dir = Path(checkpoints_dir)
    kept = set(complete_checkpoints(checkpoints_dir)[-keep:])
    for path in checkpoints_dir.glob("checkpoint-*"):
        if path not in kept and path.is_dir():
            _remove(path)


def clean_partial_checkpoints(run_dir: Path) -> None:
    """Remove what a killed run left half-done: checkpoints being written or being deleted."""
    checkpoints_dir = Path(run_dir) / "checkpoints"
    shutil.rmtree(checkpoints_dir / STAGING, ignore_errors=True)
    for path in checkpoints_dir.glob(f"{_DELETING}*"):
        shutil.rmtree(path, ignore_errors=True)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume: drop the records a killed run logged after its checkpoint (they will be logged again)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


class RunLock:
    """An exclusive lock on a run directory, held for the whole run by the process training it.

    The lock is a flock on ``output_dir/.<name>.lock`` (next to the run directory, which --overwrite
    and failed runs delete); the kernel drops it when the process exits, however it dies.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self.fd: int | None = None
        self.created_parent = False

    def acquire(self) -> "RunLock":
        parent = self.path.parent
        check_writable(parent)
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            self.created_parent = True
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # another run's release removed the (then empty) output directory
                parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                self._undo_parent()
                raise TunelabError(
                    f"run directory {self.run_dir} is in use by another tunelab train process"
                    f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish or stop it, "
                    f"or set name=... for a new run") from None
            # A holder that was releasing may have unlinked the file we opened: lock the file on disk.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it (acquire() checks it locked the file on disk)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        self._undo_parent()

    def _undo_parent(self) -> None:
        if self.created_parent:  # leave no empty output directory behind a run that did not start
            try:
                self.path.parent.rmdir()
            except OSError:
                pass
            self.created_parent = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Decide what happens to an existing run directory; return the checkpoint to resume from."""
    run_dir = Path(run_dir)
    check_writable(run_dir.parent)
    if resume:
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is None:
            raise TunelabError(f"--resume: no checkpoint to resume in {run_dir}")
        return checkpoint
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TunelabError(
                f"run directory {run_dir} already exists; use --resume to continue it, "
                f"--overwrite to replace it, or set name=... for a new run"
            )
    return None


def clear(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(Path(run_dir).name)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- index


def _connect(output_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(Path(output_dir) / INDEX_FILE, timeout=30)
    db.execute(
        "CREATE TABLE IF NOT EXISTS runs (run_dir TEXT PRIMARY KEY, name TEXT, stage TEXT, method TEXT, "
        "model TEXT, metric_name TEXT, metric_value REAL, finished_at TEXT)"
    )
    return db


def index_run(output_dir: Path, run_dir: Path, summary: dict, metric_name: str) -> None:
    value = summary.get("metrics", {}).get(metric_name)
    with _connect(output_dir) as db:
        db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(Path(run_dir).resolve()), Path(run_dir).name, summary["stage"], summary["method"],
             summary["model"], metric_name, value, time.strftime("%Y-%m-%d %H:%M:%S")),
        )
    db.close()


def list_runs(output_dir: Path) -> list[dict]:
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise TunelabError(f"--output-dir {output_dir} is a file, not a directory of runs")
    if not (Path(output_dir) / INDEX_FILE).exists():
        return []
    try:
        db = _connect(output_dir)
        cursor = db.execute("SELECT * FROM runs ORDER BY finished_at")
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
        db.close()
    except sqlite3.DatabaseError as exc:
        raise TunelabError(f"run index {Path(output_dir) / INDEX_FILE} is not a readable runs database ({exc}); "
                           "move it away and the next finished run starts a new one") from None
    return [row for row in rows if Path(row["run_dir"]).exists()]
