"""Run what a comparison lists that is not done yet, then score every approach on every test set.

Each trained step runs as its own `tunelab train` process: its peak memory is its own (one
process's peak RSS would only ever grow across approaches), a crash stays in its log, and an
interrupted step resumes from its checkpoint next time. A finished run is reused while the
config asked for is unchanged (a fingerprint beside the runs); evaluations are cached by run,
test file and options, so a second `tunelab compare` trains and scores nothing new.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..core.errors import TunelabError
from ..runs import directory
from .config import Approach, CompareConfig
from .measure import evaluate_approach, fingerprint


class Progress:
    """One line per approach on stderr: rewritten in place on a terminal, printed once otherwise."""

    def __init__(self, total: int, verbose: bool = False):
        self.total, self.verbose, self.started = total, verbose, time.time()
        self.tty = sys.stderr.isatty()

    def show(self, index: int, name: str, what: str, final: bool = False) -> None:
        line = f"[{index}/{self.total}] {name}: {what} ({time.time() - self.started:.0f}s)"
        if self.tty:
            print("\r\033[K" + line[:200], end="\n" if final else "", file=sys.stderr, flush=True)
        elif final or self.verbose:
            print(line, file=sys.stderr, flush=True)


def check_inputs(cfg: CompareConfig, approaches: list[Approach]) -> None:
    """Every test and forgetting file exists before anything trains."""
    for name, file in cfg.data.test.items():
        if not Path(file).is_file():
            raise TunelabError(f"data.test.{name}: {file} not found")
    if cfg.forgetting.text and not Path(cfg.forgetting.text).is_file():
        raise TunelabError(f"forgetting.text: {cfg.forgetting.text} not found")


def run_compare(cfg: CompareConfig, approaches: list[Approach], verbose: bool = False) -> list[dict]:
    """Bring every approach up to date and evaluate it; the table's rows, in the file's order."""

    check_inputs(cfg, approaches)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(approaches), verbose)
    finals: dict[str, Path] = {}
    rows: list[dict] = []
    for i, approach in enumerate(approaches, 1):
        progress.show(i, approach.name, "starting")
        if approach.is_baseline:
            run_dir = _ensure_baseline(out, approach, lambda what: progress.show(i, approach.name, what))
            summaries = [json.loads((run_dir / "summary.json").read_text())]
        else:
            start = finals.get(approach.after) if approach.after else None
            run_dirs = []
            for s, step in enumerate(approach.steps):
                label = approach.name if len(approach.steps) == 1 else f"{approach.name} step {s + 1}/{len(approach.steps)}"
                run_dir = _ensure_trained(out, step, start, lambda what: progress.show(i, label, what), verbose)
                run_dirs.append(run_dir)
                start = run_dir
            summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
        finals[approach.name] = run_dir
        progress.show(i, approach.name, "evaluating")
        row = evaluate_approach(cfg, approach, run_dir, summaries, out)
        rows.append(row)
        progress.show(i, approach.name, _done_line(cfg, row), final=True)
    _source_kept(cfg, approaches, rows)
    return rows


def _done_line(cfg: CompareConfig, row: dict) -> str:
    parts = [f"{name} {row['metric_name']} {row['tests'][name].get('value', float('nan')):.4g}" for name in cfg.data.test]
    if row["train_seconds"]:
        parts.append(f"trained {row['train_seconds']:.0f}s")
    return "done: " + ", ".join(parts)


def _source_kept(cfg: CompareConfig, approaches: list[Approach], rows: list[dict]) -> None:
    """Shift scenarios: the share of its starting run's source-domain metric an `after:` approach keeps."""
    source = cfg.forgetting.source
    by_name = {row["name"]: row for row in rows}
    for approach, row in zip(approaches, rows):
        row["source_kept"] = None
        if source and approach.after:
            before = by_name[approach.after]["tests"][source].get("value")
            now = row["tests"][source].get("value")
            if before and now is not None:
                row["source_kept"] = now / before if not row["lower_is_better"] else before / now


# --------------------------------------------------------------------------- baselines


def _ensure_baseline(out: Path, approach: Approach, show) -> Path:
    from ..runs.baseline import create_baseline_run

    cfg = approach.steps[0]
    run_dir = out / "runs" / approach.name
    wanted = fingerprint(yaml.safe_dump({approach.kind: cfg.model_dump(mode="json")}, sort_keys=True))
    if _stored_fingerprint(out, approach.name) == wanted and (run_dir / "summary.json").is_file():
        show("reusing the finished baseline")
        return run_dir
    show(f"building the {approach.kind} baseline")
    create_baseline_run(run_dir, approach.kind, cfg, overwrite=True)
    _store_fingerprint(out, approach.name, wanted)
    return run_dir


# --------------------------------------------------------------------------- trained runs


def _stored_fingerprint(out: Path, name: str) -> str | None:
    path = out / "state" / f"{name}.sha"
    return path.read_text().strip() if path.is_file() else None


def _store_fingerprint(out: Path, name: str, value: str) -> None:
    (out / "state").mkdir(parents=True, exist_ok=True)
    (out / "state" / f"{name}.sha").write_text(value + "\n")


def _start_from(out: Path, step, start: Path | None):
    """The step's config, continuing ``start``: init_from (same stage and method) or its merged model."""
    if start is None:
        return step
    from ..runs.open import open_run

    previous = open_run(start, f"approach {step.name}")
    if previous.baseline is None and previous.config.stage.name == step.stage.name \
            and previous.config.method.name == step.method.name:
        return step.model_copy(update={"init_from": str(start)})
    merged = out / "merged" / start.name
    if not (merged / "config.json").is_file():
        from ..export.merge import merge_run

        directory.clear(merged) if merged.exists() else None
        merge_run(start, merged)
    return step.model_copy(update={"model": str(merged)})


def _ensure_trained(out: Path, step, start: Path | None, show, verbose: bool) -> Path:
    step = _start_from(out, step, start)
    run_dir = step.run_dir
    text = step.to_yaml()
    wanted = fingerprint(text + (_summary_stamp(start) if start else ""))  # a retrained start retrains what follows
    if _stored_fingerprint(out, step.name) == wanted and (run_dir / "summary.json").is_file():
        show("reusing the finished run")
        return run_dir
    config_file = out / "configs" / f"{step.name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(text)
    resumable = _stored_fingerprint(out, step.name) == wanted and directory.last_checkpoint(run_dir) is not None
    _store_fingerprint(out, step.name, wanted)  # before training: an interrupted run resumes with the same config
    flag = "--resume" if resumable else "--overwrite"
    show("resuming training" if resumable else f"training {step.stage.name}/{step.method.name} on {step.model}")
    _train_subprocess(config_file, flag, out / "logs" / f"{step.name}.log", show, verbose)
    if not (run_dir / "summary.json").is_file():
        raise TunelabError(f"approach run {run_dir} did not finish (see {out / 'logs' / (step.name + '.log')})")
    return run_dir


def _summary_stamp(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()).get("finished_at", "") if summary.is_file() else ""


def _train_subprocess(config_file: Path, flag: str, log_file: Path, show, verbose: bool) -> None:
    """`tunelab train` in its own process; its output goes to the log (and, with verbose, the terminal)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tunelab", "train", str(config_file), flag]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log_file.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        last_error, buffer = None, b""
        try:
            while True:
                chunk = process.stdout.read1(4096) if hasattr(process.stdout, "read1") else process.stdout.read(4096)
                if not chunk:
                    break
                buffer += chunk
                *pieces, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
                for piece in pieces:
                    line = piece.decode("utf-8", "replace").rstrip()
                    if not line:
                        continue
                    log.write(line + "\n")
                    if verbose:
                        print(line, file=sys.stderr, flush=True)
                    if line.startswith("error:"):
                        last_error = line.removeprefix("error:").strip()
                    elif not line.startswith(("{", "/", "runs")):
                        show(line.strip()[:120])
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if code != 0:
        reason = last_error or f"exit status {code}"
        raise TunelabError(f"training {config_file.stem} failed: {reason} (log: {log_file})")
