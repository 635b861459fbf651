"""train.compile: the transformer blocks really run compiled, the losses are the eager run's within
float rounding, saved weights are the same files, and stage rlhf is refused with a clear error.
Tiny-llama on SYNTHETIC rows, fp32 on every CPU (so both runs round the same way)."""
from __future__ import annotations

import json

import pytest
from conftest import SYNTHETIC_ROWS, logged_losses, tiny_config, write_config, write_rows
from safetensors.torch import load_file

from tunelab.core.errors import TunelabError
from tunelab.training import engine
from tunelab.training.compiled import compiled_blocks, transformer_blocks

STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch._dynamo

    root = tmp_path_factory.mktemp("compiled")
    data = write_rows(root / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    out, graphs = {}, {}
    for compiled in (False, True):
        torch._dynamo.reset()
        cfg = tiny_config("sft", "lora", data, root / "runs", max_steps=STEPS, precision="fp32", compile=compiled)
        cfg["name"] = f"compile-{compiled}"
        out[compiled] = engine.train(cfg, quiet=True)
        graphs[compiled] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return out, graphs


def test_compiled_blocks_train_like_eager_ones(runs):
    out, graphs = runs
    assert graphs[False] == 0 and graphs[True] > 0  # the compiled run really traced graphs, the eager one none
    eager, compiled = logged_losses(out[False]), logged_losses(out[True])
    assert len(eager) == len(compiled) == STEPS
    assert eager[-1] < eager[0]  # the runs learn, so equal losses mean equal training
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-4)
    before, after = (load_file(out[c] / "adapter" / "adapter_model.safetensors") for c in (False, True))
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and (before[k] - after[k]).abs().max() < 1e-3 for k in before)
    summary = json.loads((out[True] / "summary.json").read_text())
    assert summary["metrics"]  # evaluation ran after training, on eager blocks


def test_blocks_run_eagerly_again_after_training():
    from transformers import AutoModelForCausalLM

    from tunelab.models import resolve

    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-llama"))
    blocks = transformer_blocks(model)
    assert blocks is model.model.layers
    with compiled_blocks(model, True):
        assert all(block._compiled_call_impl is not None for block in blocks)
    assert all(block._compiled_call_impl is None for block in blocks)


def test_rlhf_with_compile_is_refused_before_anything_is_written(tmp_path, cli):
    data = write_rows(tmp_path / "prompts.jsonl", SYNTHETIC_ROWS["dolly"])
    cfg = tiny_config("sft", "lora", data, tmp_path / "runs", compile=True)
    cfg["stage"] = {"name": "rlhf", "reward_model": str(tmp_path / "missing")}
    with pytest.raises(TunelabError, match="train.compile"):
        engine.train(cfg, quiet=True)
    path = write_config(tmp_path / "sft.yaml", tiny_config("sft", "lora", data, tmp_path / "runs"))
    rc, _, err = cli("train", path, "train.compile=maybe")
    assert rc == 2 and err.startswith("error:") and "train.compile" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
