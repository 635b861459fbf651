"""train.merge_accumulation: accumulated micro-batches merged into fewer, bigger ones train the same run."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import logged_losses, run_cli, saved_weights, tiny_config, write_config
from tunelab.config import TrainConfig
from tunelab.training import micro_batches
from tunelab.training.engine import train
from tunelab.training.micro_batches import Geometry, geometry


@pytest.mark.parametrize(("settings", "expected"), [
    ({"batch_size": 1, "grad_accum": 2, "max_length": 512}, Geometry(2, 1)),  # the bench's LoRA geometry
    ({"batch_size": 1, "grad_accum": 4, "max_length": 512}, Geometry(2, 2)),  # merged as far as the budget goes
    ({"batch_size": 1, "grad_accum": 6, "max_length": 256}, Geometry(3, 2)),  # a divisor of grad_accum: 4 is not
    ({"batch_size": 4, "grad_accum": 2, "max_length": 256}, Geometry(4, 2)),  # the SFT demo: over the budget
    ({"batch_size": 3, "grad_accum": 1, "max_length": 64}, Geometry(3, 1)),   # nothing to merge
    ({"batch_size": 1, "grad_accum": 2, "max_length": 512, "packing": False}, Geometry(1, 2)),
    ({"batch_size": 2, "grad_accum": 2, "max_length": 128, "row_threads": 2}, Geometry(2, 2)),
    ({"batch_size": 4, "grad_accum": 2, "max_length": 256, "merge_accumulation": "always"}, Geometry(8, 1)),
    ({"batch_size": 1, "grad_accum": 2, "max_length": 512, "merge_accumulation": "never"}, Geometry(1, 2)),
])
def test_geometry_on_a_cpu(settings, expected):
    got = geometry(TrainConfig(**settings), "sft", on_cpu=True)
    assert got == expected
    assert got.rows_per_step == settings["batch_size"] * settings["grad_accum"]


def test_auto_merges_only_packed_stages_on_a_cpu():
    t = TrainConfig(batch_size=1, grad_accum=2, max_length=512)
    assert geometry(t, "pretrain", on_cpu=True) == Geometry(2, 1)
    for stage in ("dpo", "reward", "classify", "rlhf"):
        assert geometry(t, stage, on_cpu=True) == Geometry(1, 2), stage
    assert geometry(t, "sft", on_cpu=False) == Geometry(1, 2)
    assert micro_batches.MERGED_TOKENS == 1024


@pytest.mark.parametrize("stage", ["sft", "pretrain"])
def test_merged_micro_batches_train_the_same_run(tmp_path, synthetic_data, stage):
    """2 rows × 2 accumulated against 4 rows at once: the same logged losses and adapter."""
    data = synthetic_data("text" if stage == "pretrain" else "dolly")
    runs = {}
    for mode in ("never", "always"):
        config = tiny_config(stage, "lora", data, tmp_path / mode, precision="fp32", batch_size=2, grad_accum=2,
                             max_steps=3, merge_accumulation=mode)
        runs[mode] = train(config, quiet=True)
    summaries = {mode: json.loads((run / "summary.json").read_text()) for mode, run in runs.items()}
    assert (summaries["never"]["micro_batch_rows"], summaries["never"]["accumulated_micro_batches"]) == (2, 2)
    assert (summaries["always"]["micro_batch_rows"], summaries["always"]["accumulated_micro_batches"]) == (4, 1)
    assert summaries["never"]["steps"] == summaries["always"]["steps"] == 3
    assert summaries["never"]["train_tokens"] == summaries["always"]["train_tokens"]
    split, merged = logged_losses(runs["never"]), logged_losses(runs["always"])
    assert len(split) == len(merged) == 3
    # a loss normalised per micro-batch instead of per step would differ by the accumulation factor
    assert split == pytest.approx(merged, rel=1e-5)
    a, b = saved_weights(runs["never"]), saved_weights(runs["always"])
    assert a.keys() == b.keys()
    for key in a:  # Adam moves a near-zero-gradient weight by up to lr: summation order shows at lr/100
        assert torch.allclose(a[key], b[key], atol=1e-2 / 100), (key, (a[key] - b[key]).abs().max())


def test_a_bad_mode_is_one_error_line(tmp_path, synthetic_data):
    config = tiny_config("sft", "lora", synthetic_data("dolly"), tmp_path / "runs")
    path = write_config(tmp_path / "run.yaml", config)
    code, out, err = run_cli("train", str(path), "train.merge_accumulation=sometimes")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "merge_accumulation" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
