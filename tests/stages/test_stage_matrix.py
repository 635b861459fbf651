"""The shared stage matrix: every registered stage trains from the CLI on a tiny model, evaluates
with `tunelab eval`, loads with `tunelab.load`, and resumes from a checkpoint.

A new stage gets a row in CASES; one that forgets its evaluation (or any part of the stage
contract) fails here. All data is SYNTHETIC (conftest.SYNTHETIC_ROWS).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import SYNTHETIC_ROWS, run_cli, tiny_config, write_config, write_rows
from tunelab.models import CAUSAL_LM, SEQ_CLS
from tunelab.stages import STAGES

# stage -> (model, data dialect, extra stage options). rlhf also gets a reward run (see below).
CASES = {
    "pretrain": ("tiny-llama", "text", {}),
    "sft": ("tiny-llama", "dolly", {}),
    "classify": ("tiny-bert", "classification", {}),
    "reward": ("tiny-llama", "preference", {}),
    "dpo": ("tiny-llama", "preference", {}),
    "rlhf": ("tiny-llama", "preference", {"samples_per_prompt": 2, "max_new_tokens": 4}),
}
CONTRACT = ("Config", "MODEL_KIND", "ACCEPTS", "KEY_METRIC", "build_datasets", "build_model", "collate",
            "compute_loss", "evaluate", "EVAL_OPTIONS")


def test_every_registered_stage_has_a_matrix_case():
    assert set(CASES) == set(STAGES), "add the new stage to CASES (model, data, options)"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_module_honours_the_contract(name):
    stage = STAGES[name]
    missing = [attr for attr in CONTRACT if not hasattr(stage, attr)]
    assert not missing, f"stage {name} lacks {missing}"
    assert stage.Config().name == name
    assert stage.MODEL_KIND in (CAUSAL_LM, SEQ_CLS)
    assert set(stage.EVAL_OPTIONS) <= {"threshold", "positive", "generate", "max_new_tokens"}
    for link in getattr(stage, "LINKS", ()):
        assert link.field in stage.Config.model_fields, f"{name}: LINKS names unknown field stage.{link.field}"


def _config(root: Path, stage: str, extra_stage: dict, **train) -> Path:
    model, dialect, options = CASES[stage]
    data = write_rows(root / f"{stage}.jsonl", SYNTHETIC_ROWS[dialect])
    cfg = tiny_config(stage, "lora", data, root / "runs", **train)
    cfg.update(model=model, name=f"matrix-{stage}", stage={"name": stage, **options, **extra_stage})
    return write_config(root / f"{stage}.yaml", cfg)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("matrix-rm")
    rc, out, err = run_cli("train", _config(root, "reward", {}, max_steps=2), "--quiet")
    assert rc == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", sorted(CASES))
def test_stage_trains_evaluates_loads_and_resumes(stage, tmp_path, reward_run):
    import tunelab

    extra = {"reward_model": str(reward_run)} if stage == "rlhf" else {}
    config = _config(tmp_path, stage, extra, max_steps=2, save_steps=1, save_total_limit=3)

    rc, out, err = run_cli("train", config, "--quiet")
    assert rc == 0, err[-3000:]
    run = Path(out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == stage and summary["steps"] == 2
    assert STAGES[stage].KEY_METRIC in summary["metrics"], f"{stage}: the run's key metric is not reported"

    # Its own evaluation, through the CLI, on a test file of the stage's data.
    test_file = write_rows(tmp_path / "test.jsonl", SYNTHETIC_ROWS[CASES[stage][1]])
    rc, out, err = run_cli("eval", run, "--data", f"held={test_file}", "--json")
    assert rc == 0, err[-3000:]
    report = json.loads(out)["data"]["held"]
    numbers = {k: v for k, v in report.items() if isinstance(v, float)}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), report
    assert (run / "eval" / "held.json").is_file()

    # tunelab.load rebuilds the trained model.
    loaded = tunelab.load(run)
    assert loaded.config.stage.name == stage and loaded.info.model_kind == STAGES[stage].MODEL_KIND

    # --resume continues from the last checkpoint to a later max_steps.
    rc, out, err = run_cli("train", config, "train.max_steps=3", "--resume", "--quiet")
    assert rc == 0, err[-3000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize("stage", sorted(CASES))
def test_early_stopping_best_weights_and_tensorboard_on_every_stage(stage, tmp_path, reward_run):
    """Each stage evaluates every step, stops when its key metric has not improved for one evaluation
    (min_delta so large that nothing counts as an improvement: the stop must come at step 2 of 6), keeps
    the best evaluation's weights and logs to TensorBoard in the run directory."""
    extra = {"reward_model": str(reward_run)} if stage == "rlhf" else {}
    metric = STAGES[stage].KEY_METRIC
    config = _config(tmp_path, stage, extra, max_steps=6, eval_steps=1, load_best=True, report_to=["tensorboard"],
                     early_stopping={"metric": metric, "patience": 1, "min_delta": 1e9})
    rc, out, err = run_cli("train", config, "--quiet")
    assert rc == 0, err[-3000:]
    run = Path(out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["early_stopped"] is True and summary["steps"] == 2, summary
    # The best weights are the best evaluation's (min_delta decides only when to stop).
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if metric in r]
    assert [r["step"] for r in evals] == [1, 2], evals
    pick = min if metric.endswith(("loss", "perplexity")) else max
    best = pick(evals, key=lambda r: r[metric])
    assert summary["best_metric"] == metric and summary["best_step"] == best["step"], summary
    assert summary["best_value"] == pytest.approx(best[metric])
    assert list((run / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event file"
