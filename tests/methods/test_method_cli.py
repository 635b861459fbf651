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
            rc, out, err = run_cli("train", config, f"method={method}", f"name=sft-{method}", *NEW_METHODS[method],
                                   "--quiet")
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


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_merged_classifier_is_faithful_or_refused(tmp_path, model):
    """A classify run either merges into a model stock transformers reloads with the run's outputs,
    or merge refuses with a one-line error and leaves nothing behind."""
    from transformers import AutoModelForSequenceClassification

    import tunelab
    from tunelab.core.errors import TunelabError
    from tunelab.export.merge import merge_run

    data = write_rows(tmp_path / "labels.jsonl", SYNTHETIC_ROWS["classification"])
    config = tiny_config("classify", "lora", data, tmp_path / "runs", max_steps=1, max_length=32)
    run_dir = tunelab.train({**config, "model": model}, quiet=True)
    try:
        out = merge_run(run_dir, tmp_path / "merged")
    except TunelabError as exc:
        assert "cannot be written as a plain" in str(exc)
        assert not (tmp_path / "merged").exists()
        return
    loaded = tunelab.load(run_dir)
    ids = loaded.tokenizer(["I love snow."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForSequenceClassification.from_pretrained(out)(**ids).logits,
                                   loaded.model(**ids).logits, atol=1e-4, rtol=1e-4)
