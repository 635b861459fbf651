"""Each method trains end to end through `tunelab train` (sft, tiny-llama); `tunelab merge` exports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SYNTHETIC_ROWS, run_cli, tiny_config, write_config, write_rows

NEW_METHODS = {
    "freeze": ["method.k=1"],
    "adapter": ["method.placement=houlsby", "method.bottleneck=8"],
    "prefix": ["method.num_virtual_tokens=4", "method.prefix_projection=true"],
    "prompt": ["method.num_virtual_tokens=4"],
    "ia3": [],
    "lora": ["method.r=4", "method.use_dora=true"],
}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Factory: train `method` once for this module via the CLI; return (run_dir, stderr)."""
    root = tmp_path_factory.mktemp("method-cli")
    data = write_rows(root / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    config = write_config(root / "sft.yaml", tiny_config("sft", "full", data, root / "runs", max_steps=2))
    done: dict[str, tuple[Path, str]] = {}

    def get(method: str) -> tuple[Path, str]:
        if method not in done:
            # Default output (not --quiet, which prints only the run directory): the test reads the params line.
            rc, out, err = run_cli("train", config, f"method={method}", f"name=sft-{method}", *NEW_METHODS[method])
            assert rc == 0, err[-3000:]
            done[method] = (Path(out.strip().splitlines()[-1]), err)
        return done[method]

    return get


@pytest.mark.parametrize("method", ["freeze", "adapter", "prefix", "prompt", "ia3"])
def test_method_trains_from_the_cli(cli_run, method):
    run_dir, err = cli_run(method)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert f"trainable params {summary['trainable_params']:,} / {summary['total_params']:,}" in err
    import tunelab

    reply = tunelab.load(run_dir).generate("What colour is snow?", max_new_tokens=4)
    assert isinstance(reply, str)


@pytest.mark.parametrize("method", ["lora", "ia3", "freeze"])
def test_merge_writes_a_plain_model_with_the_same_outputs(cli_run, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tunelab

    run_dir, _ = cli_run(method)
    rc, out, err = run_cli("merge", run_dir, tmp_path / "merged")
    assert rc == 0, err[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer(["Snow is white."], return_tensors="pt")
    with torch.no_grad():
        expected = tunelab.load(run_dir).model(**ids).logits
        torch.testing.assert_close(merged(**ids).logits, expected, atol=1e-5, rtol=0)


def test_merge_of_a_method_without_merge_is_an_error(cli_run, tmp_path):
    run_dir, _ = cli_run("prefix")
    rc, _, err = run_cli("merge", run_dir, tmp_path / "merged")
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: method 'prefix'"), err[-2000:]
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_model_transformers_would_rebuild_differently(tmp_path):
    from torch import nn

    from tunelab.core.errors import TunelabError
    from tunelab.export.merge import _check_reloads_identically
    from tunelab.models import SEQ_CLS, load_model

    model, tokenizer = load_model("tiny-bert", SEQ_CLS, num_labels=2)
    model.save_pretrained(tmp_path / "plain")
    _check_reloads_identically(model.eval(), tokenizer, tmp_path / "plain", tmp_path)  # stock: fine
    model.bert.pooler.activation = nn.Identity()  # a change config.json cannot express
    model.save_pretrained(tmp_path / "custom")
    with pytest.raises(TunelabError, match="cannot be written as a plain BertForSequenceClassification"):
        _check_reloads_identically(model.eval(), tokenizer, tmp_path / "custom", tmp_path)


# What `tunelab merge` must do with a classify run, per backbone, and why (measured: both refuse).
#  - tiny-llama: the new `score` head is nn.Linear with a bias; stock LlamaForSequenceClassification
#    builds `score` without one, so a reload silently drops the bias.
#  - tiny-bert: the pooler is tunelab's weight-free masked mean; stock BERT rebuilds its dense+tanh
#    pooler (newly initialised) from config.json.
CLASSIFIER_MERGE = {"tiny-llama": "LlamaForSequenceClassification", "tiny-bert": "BertForSequenceClassification"}


@pytest.mark.parametrize("model", sorted(CLASSIFIER_MERGE))
def test_merge_of_a_classifier_is_refused_and_the_refusal_is_warranted(tmp_path, model):
    """A classify run cannot be written as a plain transformers classifier: merge refuses with a
    one-line error and leaves nothing behind. The refusal is not spurious: the merged weights,
    saved and reloaded by stock transformers by hand, give different outputs."""
    import transformers

    import tunelab
    from tunelab.core.errors import TunelabError
    from tunelab.export.merge import merge_run
    from tunelab.methods import lora

    data = write_rows(tmp_path / "labels.jsonl", SYNTHETIC_ROWS["classification"])
    config = tiny_config("classify", "lora", data, tmp_path / "runs", max_steps=1, max_length=32)
    run_dir = tunelab.train({**config, "model": model}, quiet=True)
    with pytest.raises(TunelabError, match=f"cannot be written as a plain {CLASSIFIER_MERGE[model]}"):
        merge_run(run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()

    loaded = tunelab.load(run_dir)
    merged = lora.merge(loaded.model).eval()
    assert type(merged).__name__ == CLASSIFIER_MERGE[model]
    merged.save_pretrained(tmp_path / "by-hand")
    stock = getattr(transformers, CLASSIFIER_MERGE[model]).from_pretrained(tmp_path / "by-hand").eval()
    ids = loaded.tokenizer(["I love snow."], return_tensors="pt")
    ids = {k: v for k, v in ids.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert not torch.allclose(stock(**ids).logits, merged(**ids).logits, atol=1e-4, rtol=1e-4)
