"""Real 2-process data-parallel training (torchrun, gloo on CPU) through `tunelab train --nproc 2`."""
import json
from pathlib import Path

import pytest


# Loaded by every Python process of the launch (as sitecustomize): each rank appends the batches
# its Trainer trains on to shards-<rank>.jsonl, so the test sees what each rank was given.
_RECORD_BATCHES = """
import json, os
if os.environ.get("RANK") is not None and os.environ.get("TUNELAB_TEST_BATCH_LOG"):
    from transformers import Trainer

    _plain = Trainer.training_step

    def _recording(self, model, inputs, *args, **kwargs):
        path = os.path.join(os.environ["TUNELAB_TEST_BATCH_LOG"], "shards-" + os.environ["RANK"] + ".jsonl")
        with open(path, "a") as handle:
            handle.write(json.dumps({"step": self.state.global_step, "rows": inputs["input_ids"].tolist()}) + "\\n")
        return _plain(self, model, inputs, *args, **kwargs)

    Trainer.training_step = _recording
"""


@pytest.mark.slow
def test_two_process_training_on_different_shards_syncs_weights_and_writes_the_run_once(tiny_run_config, cli, tmp_path):
    """The ranks train on different shards of the data, yet end with the same weights (DDP
    averages their gradients), and only rank 0 writes the run."""
    import os

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RECORD_BATCHES)
    env = {"TUNELAB_TEST_BATCH_LOG": str(hook),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    config = tiny_run_config("sft", "lora", max_steps=3, batch_size=2)
    rc, out, err = cli("train", config, "--nproc", "2", "--quiet", env=env, timeout=600)
    assert rc == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert out.strip().splitlines().count(str(run_dir)) == 1  # printed by rank 0 only

    shards = [[json.loads(line) for line in (hook / f"shards-{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)]
    assert [r["step"] for r in shards[0]] == [r["step"] for r in shards[1]] == [0, 1, 2]
    for step0, step1 in zip(*shards):
        assert step0["rows"] != step1["rows"], f"both ranks trained on the same batch at step {step0['step']}"
    first = [{tuple(row) for row in shard[0]["rows"]} for shard in shards]
    assert not first[0] & first[1], "the first batches of the two ranks share rows: the data was not sharded"

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
