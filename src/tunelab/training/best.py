"""Early stopping and the best evaluated weights (train.early_stopping, train.load_best).

Early stopping is transformers' own EarlyStoppingCallback. The best weights are kept by our own
callback rather than `load_best_model_at_end`: that option needs a checkpoint at every evaluation
and a best checkpoint that rotation never deletes, while tunelab's checkpoints are atomic renames
rotated by step (trainer.py) and often off (`train.save_steps: 0`). Only trainable parameters can
change, so a copy of those is the whole difference; it is also written to RUN/best.pt, so a run
resumed with --resume still ends with the best weights seen before the interruption.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..core.errors import TunelabError

BEST_FILE = "best.pt"


def check_metric(metrics: dict, metric: str, field: str) -> None:
    """A metric the evaluation does not report is an error naming the ones it does (at the first evaluation)."""
    if metric not in metrics:
        reported = ", ".join(k for k in metrics if k.startswith("eval_") and "runtime" not in k
                             and "per_second" not in k)
        raise TunelabError(f"{field}: metric '{metric}' is not reported by this stage's evaluation "
                           f"(it reports: {reported})")


class MetricCheck(TrainerCallback):
    """Fail at the first evaluation when the early-stopping metric does not exist (not silently never stop)."""

    def __init__(self, metric: str):
        self.metric = metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        check_metric(metrics or {}, self.metric, "train.early_stopping.metric")


class BestWeights(TrainerCallback):
    """Track the best evaluation after step 0 and restore its trainable weights when training ends."""

    def __init__(self, run_dir: Path, metric: str, greater_is_better: bool, resumed_step: int | None):
        self.path = Path(run_dir) / BEST_FILE
        self.metric, self.greater = metric, greater_is_better
        self.step: int | None = None
        self.value: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        if resumed_step is not None and self.path.exists():
            saved = torch.load(self.path, weights_only=True)
            if saved["step"] <= resumed_step:  # a best found after the checkpoint is evaluated again
                self.step, self.value, self.weights = saved["step"], saved["value"], saved["weights"]

    def _better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value > self.value if self.greater else value < self.value

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        metrics = metrics or {}
        check_metric(metrics, self.metric, "train.load_best")
        if state.global_step == 0 or not self._better(metrics[self.metric]):
            return  # step 0 is the untrained model (eval_before), not a result of training
        self.step, self.value = state.global_step, float(metrics[self.metric])
        self.weights = {name: p.detach().cpu().clone() for name, p in _unwrapped(model).named_parameters()
                        if p.requires_grad}
        if state.is_world_process_zero:
            staging = self.path.with_suffix(".tmp")
            torch.save({"step": self.step, "value": self.value, "weights": self.weights}, staging)
            os.replace(staging, self.path)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.weights is None:
            return
        params = dict(_unwrapped(model).named_parameters())
        with torch.no_grad():
            for name, saved in self.weights.items():
                params[name].copy_(saved.to(params[name].device))

    def summary(self) -> dict:
        return {} if self.step is None else {"best_step": self.step, "best_metric": self.metric,
                                             "best_value": self.value}


def _unwrapped(model):
    return model.module if hasattr(model, "module") else model
