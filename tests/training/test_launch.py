"""Real 2-process data-parallel training (torchrun, gloo on CPU) through `tunelab train --nproc 2`."""
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_training_syncs_weights_and_writes_the_run_once(tiny_run_config, cli):
    config = tiny_run_config("sft", "lora", max_steps=3, batch_size=2)
    rc, out, err = cli("train", config, "--nproc", "2", "--quiet", timeout=600)
    assert rc == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert out.strip().splitlines().count(str(run_dir)) == 1  # printed by rank 0 only

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums

    # Written once: one log record per optimizer step, one adapter.
    steps = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == ["README.md", "adapter_config.json",
                                                                      "adapter_model.safetensors"]


def test_bad_config_fails_once_before_any_process_starts(tiny_run_config, cli):
    config = tiny_run_config("sft", "lora")
    rc, out, err = cli("train", config, "train.epoch=1", "--nproc", "2")
    assert rc == 2
    assert err.strip().splitlines() == ["error: " + err.strip().split("error: ", 1)[1]]
    assert "train.epochs" in err


def test_deepspeed_and_fsdp_settings_reach_the_trainer(tmp_path):
    from tunelab.config import TrainConfig
    from tunelab.training.trainer import _scale_out_arguments
    from tunelab.core.errors import TunelabError

    ds = tmp_path / "ds.json"
    ds.write_text("{}")
    assert _scale_out_arguments(TrainConfig(deepspeed=str(ds))) == {"deepspeed": str(ds)}
    assert _scale_out_arguments(TrainConfig(fsdp="full_shard auto_wrap")) == {"fsdp": "full_shard auto_wrap",
                                                                               "fsdp_config": {}}
    assert _scale_out_arguments(TrainConfig()) == {}
    with pytest.raises(TunelabError, match="train.deepspeed"):
        _scale_out_arguments(TrainConfig(deepspeed=str(tmp_path / "missing.json")))
