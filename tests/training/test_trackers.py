"""train.report_to: a tiny run's TensorBoard events and MLflow run, read back with their own readers."""
from __future__ import annotations

import json

import pytest
from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

from tunelab.core.errors import TunelabError
from tunelab.training.engine import train


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_hold_what_metrics_jsonl_holds(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    data = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    cfg = tiny_config("sft", "lora", data, tmp_path / "runs", max_steps=3, eval_steps=1,
                      report_to=["tensorboard", "mlflow"])
    run = train(cfg, quiet=True)
    records = _records(run)
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    summary = json.loads((run / "summary.json").read_text())
    assert len(losses) == 3 and len(evals) == 3

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)
    assert {e.step: e.value for e in events.Scalars("eval/loss")} == pytest.approx(evals)
    assert events.Scalars("final/eval_loss")[-1].value == pytest.approx(summary["metrics"]["eval_loss"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunelab")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == summary["name"] and logged.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "loss")}
    assert history == pytest.approx(losses)
    assert logged.data.metrics["final/eval_loss"] == pytest.approx(summary["metrics"]["eval_loss"])
    assert float(logged.data.params["learning_rate"]) == pytest.approx(cfg["train"]["lr"])
    assert logged.data.tags["tunelab.run_dir"] == str(run)
    assert logged.info.artifact_uri.startswith((tmp_path / "runs" / "mlruns").as_uri())  # not in the cwd
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"summary.json", "config.yaml", "loss.png"} <= artifacts


def test_report_to_none_and_unknown_trackers():
    from tunelab.config import load_config

    base = {"model": "tiny-llama", "stage": "sft", "method": "lora", "data": {"train": "x.jsonl"}}
    assert load_config({**base, "train": {"report_to": "none"}}).train.report_to == []
    assert load_config({**base, "train": {"report_to": "tensorboard"}}).train.report_to == ["tensorboard"]
    with pytest.raises(TunelabError, match=r"train.report_to\[0\]: input should be 'tensorboard', 'mlflow' or 'trackio'"):
        load_config({**base, "train": {"report_to": ["wandb"]}})
