"""The `train:` settings the README lists reach transformers' Trainer, and `summary.json` keeps the
before-training eval metrics (`train.eval_before`)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from tunelab.config import load_config
from tunelab.runs.directory import read_jsonl
from tunelab.training import engine, trainer


def _arguments(tmp_path, has_eval=True, **train):
    cfg = load_config({"model": "tiny-llama", "stage": "sft", "method": "lora", "data": {"train": "unused.jsonl"},
                       "train": train})
    return trainer._training_arguments(cfg, tmp_path, has_eval=has_eval)


def _learning_rates(args, steps: int) -> list[float]:
    """The learning rate of each optimizer step, from the scheduler the Trainer builds from ``args``."""
    from transformers import Trainer

    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def test_batch_settings_reach_the_training_arguments(tmp_path):
    args = _arguments(tmp_path, batch_size=3, grad_accum=4, eval_batch_size=5, lr=1e-3, weight_decay=0.01,
                      max_grad_norm=0.5, epochs=2, max_steps=7, seed=11)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.per_device_eval_batch_size) == (3, 4, 5)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == (1e-3, 0.01, 0.5)
    assert (args.num_train_epochs, args.max_steps, args.seed, args.data_seed) == (2, 7, 11, 11)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_warmup_then_the_schedule(tmp_path, scheduler):
    """warmup_ratio=0.1 of 100 steps: 10 steps rising linearly to the peak, then the schedule."""
    args = _arguments(tmp_path, has_eval=False, lr=1e-3, warmup_ratio=0.1, scheduler=scheduler)
    assert args.get_warmup_steps(100) == 10
    rates = _learning_rates(args, 100)
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.5e-3) and rates[10] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11])), "warmup does not rise"
    after = rates[10:]
    if scheduler == "constant":
        assert after == pytest.approx([1e-3] * 90)
    else:
        progress = [(step - 10) / 90 for step in range(10, 100)]
        shape = [(1 + math.cos(math.pi * p)) / 2 for p in progress] if scheduler == "cosine" else [1 - p for p in progress]
        assert after == pytest.approx([1e-3 * s for s in shape], abs=1e-9)


def test_summary_keeps_the_metrics_from_before_training(tmp_path, synthetic_data):
    """eval_before: summary.json has before_eval_* (loss, perplexity for LM stages) from the step-0
    evaluation in metrics.jsonl, and the final eval_* from after training; without it, no before_*."""
    data = synthetic_data("dolly")
    run = engine.train(tiny_config("sft", "lora", data, tmp_path / "runs", max_steps=2, eval_before=True), quiet=True)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    step0 = next(r for r in read_jsonl(run / "metrics.jsonl") if r["step"] == 0 and "eval_loss" in r)
    assert metrics["before_eval_loss"] == step0["eval_loss"]
    assert metrics["before_eval_perplexity"] == pytest.approx(math.exp(step0["eval_loss"]))
    assert metrics["eval_loss"] != metrics["before_eval_loss"]  # the final one is from after training
    assert not any("runtime" in key or "per_second" in key for key in metrics if key.startswith("before_"))

    cfg = tiny_config("sft", "lora", data, tmp_path / "runs", max_steps=1, eval_before=False)
    cfg["name"] = "no-before"
    metrics = json.loads((engine.train(cfg, quiet=True) / "summary.json").read_text())["metrics"]
    assert "eval_loss" in metrics and not any(key.startswith("before_") for key in metrics)
