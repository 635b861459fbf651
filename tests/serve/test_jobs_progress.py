"""jobs_progress: a run's metrics.jsonl rows -> OpenAI events, estimate and result file (no training)."""
from __future__ import annotations

import time

from tunelab.serve.jobs_progress import estimate_finish, metric_events, results_csv

ROWS = [{"step": 1, "loss": 2.0, "train_runtime": 1.0}, {"step": 2, "loss": 1.5, "train_runtime": 2.0},
        {"step": 2, "eval_loss": 1.7, "eval_perplexity": 5.5}]


def test_each_step_is_reported_once_across_a_resume():
    seen = {}
    first = metric_events(ROWS, seen)
    assert [data["step"] for _, data in first] == [1, 2, 2]
    assert first[2] == ("Step 2: eval loss=1.7000", {"step": 2, "eval_loss": 1.7, "eval_perplexity": 5.5})
    resumed = ROWS[:2] + [{"step": 3, "loss": 1.0, "train_runtime": 3.0}]  # metrics truncated to the checkpoint
    assert [message for message, _ in metric_events(resumed, seen)] == ["Step 3: training loss=1.0000"]
    assert seen == {"train": 3, "eval": 2}


def test_estimate_and_results():
    assert estimate_finish(ROWS, max_steps=-1) is None  # epochs: the step count is not known up front
    assert abs(estimate_finish(ROWS, max_steps=12) - (time.time() + 10)) < 2  # 1 s/step, 10 steps to go
    assert results_csv(ROWS).decode().splitlines() == ["step,train_loss,valid_loss", "1,2.0,", "2,1.5,1.7"]
