"""train.eval_steps, train.early_stopping and train.load_best on a tiny LoRA run that over-fits on
purpose (lr 0.1 on six SYNTHETIC rows: the held-out loss turns up within a few steps)."""
from __future__ import annotations

import json

import pytest
from conftest import tiny_config, write_rows, SYNTHETIC_ROWS
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.core.errors import TunelabError
from tunelab.training.engine import train


def _config(tmp_path, **train):
    data = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    return tiny_config("sft", "lora", data, tmp_path / "runs", lr=0.1, eval_steps=1, **train)


def _evals(run_dir) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]


def test_early_stopping_stops_at_the_evaluation_patience_allows_and_load_best_restores_the_best(tmp_path):
    cfg = _config(tmp_path, max_steps=12, save_steps=1, save_total_limit=20, load_best=True,
                  early_stopping={"metric": "eval_loss", "patience": 1})
    run = train(cfg, quiet=True)
    evals = _evals(run)
    assert [step for step, _ in evals] == list(range(1, len(evals) + 1))  # eval_steps=1: every step

    # Replay the rule on the logged losses: stop at the first evaluation no better than the best so far.
    best_step, best, stop = None, float("inf"), None
    for step, loss in evals:
        if loss < best:
            best_step, best = step, loss
        else:
            stop = step
            break
    summary = json.loads((run / "summary.json").read_text())
    assert stop is not None and stop < 12, f"the run did not over-fit within 12 steps: {evals}"
    assert summary["steps"] == stop and summary["early_stopped"] is True
    assert (summary["best_step"], summary["best_metric"]) == (best_step, "eval_loss")
    assert summary["best_value"] == pytest.approx(best) and summary["metrics"]["eval_loss"] == pytest.approx(best)

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    at_best = load_file(run / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    at_stop = load_file(run / "checkpoints" / f"checkpoint-{stop}" / "adapter_model.safetensors")
    assert saved.keys() == at_best.keys()
    assert all(saved[k].equal(at_best[k]) for k in saved)
    assert any(not saved[k].equal(at_stop[k]) for k in saved)  # the last step's weights were replaced
    assert not (run / "best.pt").exists()


def test_an_early_stopping_metric_the_stage_does_not_report_is_named(tmp_path):
    cfg = _config(tmp_path, max_steps=2, early_stopping={"metric": "f1"})
    with pytest.raises(TunelabError, match=r"train.early_stopping.metric: metric 'eval_f1' is not reported .*eval_loss"):
        train(cfg, quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_eval_settings_without_eval_data_fail_before_the_run_directory(tmp_path):
    cfg = _config(tmp_path, max_steps=2, load_best=True)
    cfg["data"]["eval_fraction"] = 0.0
    with pytest.raises(TunelabError, match=r"train.early_stopping needs eval data|train.load_best needs eval data"):
        train(cfg, quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_early_stopping_config_defaults_and_direction():
    base = {"model": "tiny-llama", "stage": "sft", "method": "lora", "data": {"train": "x.jsonl"}}
    es = load_config({**base, "train": {"early_stopping": {"metric": "accuracy"}}}).train.early_stopping
    assert (es.metric, es.patience, es.min_delta, es.greater_is_better) == ("eval_accuracy", 3, 0.0, True)
    assert load_config({**base, "train": {"load_best": True}}).train.best_metric.greater_is_better is False
    with pytest.raises(TunelabError, match=r"train.early_stopping.patience"):
        load_config({**base, "train": {"early_stopping": {"patience": 0}}})
    with pytest.raises(TunelabError, match=r"unknown key 'train.early_stopping.patiense'.*'train.early_stopping.patience'"):
        load_config({**base, "train": {"early_stopping": {"patiense": 2}}})
