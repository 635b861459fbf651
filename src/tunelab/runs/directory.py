"""The run directory — the contract later tooling relies on — and the index of runs.

run_dir/
  config.yaml      fully resolved config
  metrics.jsonl    one JSON object per logged step / eval
  summary.json     written last: its presence means the run finished
  loss.png         train/eval loss curves
  tokenizer/       the tokenizer
  adapter/ | model/ | ...   weights, written by the method's save()
  checkpoints/     Trainer checkpoints (for --resume)
"""
from __future__ import annotations

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


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last; a run killed mid-save
    leaves a checkpoint without it, which cannot be resumed)."""
    checkpoints = sorted((p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*")
                          if (p / "trainer_state.json").is_file()),
                         key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return checkpoints[-1] if checkpoints else None


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
