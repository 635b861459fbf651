"""What a job's run directory says about its progress, in OpenAI's shapes: metric events,
checkpoint objects, the result file and an estimated finish (read from metrics.jsonl and checkpoints/)."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.errors import TunelabError
from ..runs.directory import complete_checkpoints, read_jsonl


def read_metrics(run_dir: Path) -> list[dict]:
    try:
        return read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    except (TunelabError, ValueError):
        return []  # a line being written; read again on the next poll


def metric_events(rows: list[dict], progress: dict) -> list[tuple[str, dict]]:
    """(message, data) for each train / eval row past the steps in ``progress`` (updated in place).

    A resumed run logs again the steps after its checkpoint; each step is reported once.
    """
    events = []
    for row in rows:
        step = row.get("step")
        for key, kind in (("loss", "train"), ("eval_loss", "eval")):
            if key not in row or not isinstance(step, int) or step <= progress.get(kind, 0):
                continue
            progress[kind] = step
            if kind == "train":
                events.append((f"Step {step}: training loss={row['loss']:.4f}",
                               {"step": step, "train_loss": row["loss"], "epoch": row.get("epoch"),
                                "learning_rate": row.get("learning_rate")}))
            else:
                events.append((f"Step {step}: eval loss={row['eval_loss']:.4f}",
                               {"step": step, **{k: v for k, v in row.items() if k.startswith("eval_")}}))
    return events


def estimate_finish(rows: list[dict], max_steps: int) -> int | None:
    """From the pace so far, where the step count is known (train.max_steps); else None."""
    timed = [r for r in rows if "loss" in r and isinstance(r.get("train_runtime"), (int, float))]
    if max_steps <= 0 or not timed:
        return None
    last = timed[-1]
    pace = last["train_runtime"] / max(last["step"], 1)  # seconds per step
    return int(time.time() + pace * max(max_steps - last["step"], 0))


def checkpoint_objects(run_dir: Path, job_id: str, model_name: str) -> list[dict]:
    """The run's kept checkpoints, newest first, each with the losses logged at its step."""
    if not run_dir.is_dir():
        return []
    metrics = read_metrics(run_dir)
    items = []
    for path in reversed(complete_checkpoints(run_dir / "checkpoints")):
        step = int(path.name.rsplit("-", 1)[1])
        logged = {k: v for row in metrics if row.get("step") == step for k, v in row.items()}
        items.append({"id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",
                      "object": "fine_tuning.job.checkpoint", "created_at": int(path.stat().st_mtime),
                      "fine_tuned_model_checkpoint": f"{model_name}:ckpt-step-{step}",
                      "fine_tuning_job_id": job_id, "step_number": step,
                      "metrics": {"step": step, "train_loss": logged.get("loss"),
                                  "valid_loss": logged.get("eval_loss")}})
    return items


def results_csv(metrics: list[dict]) -> bytes:
    """OpenAI's result file: one row per logged step (train loss; valid loss where an eval ran)."""
    by_step: dict[int, dict] = {}
    for row in metrics:
        if isinstance(row.get("step"), int) and ("loss" in row or "eval_loss" in row):
            by_step.setdefault(row["step"], {}).update(row)
    lines = ["step,train_loss,valid_loss"]
    for step in sorted(by_step):
        row = by_step[step]
        lines.append(f"{step},{row.get('loss', '')},{row.get('eval_loss', '')}")
    return ("\n".join(lines) + "\n").encode()
