"""Method `head`: frozen backbone, cached pooled features, only the head trains.

Data here is SYNTHETIC (made-up sentences); models are the tiny random ones.
"""
from __future__ import annotations

import json

import pytest
import torch

from tunelab import TunelabError
from tunelab.data.collate import pad_right as pad_batch
from tunelab.models.classifier import build_classifier
from tunelab.training.engine import train
from tunelab.runs.open import load
from tunelab.methods import head
from tunelab.models import feature_cache

TEXTS = ["win a free prize now", "see you at lunch", "call me", "cheap pills here"]  # SYNTHETIC


@pytest.fixture
def count_backbone(monkeypatch):
    """Counts examples that go through the backbone (the cached-feature path calls pooled_features)."""
    seen = {"examples": 0}
    original = feature_cache.pooled_features

    def counting(model, input_ids, attention_mask):
        seen["examples"] += input_ids.shape[0]
        return original(model, input_ids, attention_mask)

    monkeypatch.setattr(feature_cache, "pooled_features", counting)
    return seen


def _batch(tokenizer, texts=TEXTS):
    return pad_batch([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id)


def _rows(n):
    words = ["prize", "lunch", "pills", "meeting", "cash", "notes", "free", "dinner"]
    return [{"text": f"{words[i % 8]} message {i}", "label": "spam" if i % 2 else "ham"} for i in range(n)]  # SYNTHETIC


def _config(tmp_path, model, cache, epochs=3, rows=12, name="run"):
    data = tmp_path / f"train-{rows}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(rows)))
    return {"name": name, "model": model, "stage": "classify", "method": {"name": "head", "cache_dir": str(cache)},
            "data": {"train": str(data), "eval_fraction": 0.25},
            "train": {"epochs": epochs, "batch_size": 4, "max_length": 16, "lr": 1e-2, "save_steps": 0,
                      "eval_before": False, "logging_steps": 1},
            "output_dir": str(tmp_path / "runs")}


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_features_computed_once_across_epochs_and_runs(tmp_path, count_backbone, model):
    cache = tmp_path / "features"
    run = train(_config(tmp_path, model, cache, epochs=3), quiet=True)
    assert count_backbone["examples"] == 12  # 9 train + 3 eval, once each, over 3 epochs + evals
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["trainable_params"] < summary["total_params"] / 100
    assert len(list(cache.iterdir())) == 1  # one fingerprint directory

    train(_config(tmp_path, model, cache, epochs=2, name="again"), quiet=True)
    assert count_backbone["examples"] == 12  # same model + data: everything came from disk

    train(_config(tmp_path, model, cache, rows=14, name="more-data"), quiet=True)
    assert count_backbone["examples"] == 12 + 2  # only the two new texts ran (same fingerprint)


def test_only_the_head_changes_and_save_load_round_trip(tmp_path):
    run = train(_config(tmp_path, "tiny-bert", tmp_path / "features", epochs=2), quiet=True)
    loaded = load(run)
    base, tok = build_classifier("tiny-bert", ["ham", "spam"])
    trained = loaded.model.state_dict()
    for name, value in base.state_dict().items():
        if name.startswith("classifier."):
            assert not torch.equal(value, trained[name]), f"{name} did not train"
        else:
            assert torch.equal(value, trained[name]), f"frozen {name} changed"
    input_ids, mask = _batch(tok)
    again = load(run).model
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=input_ids, attention_mask=mask).logits,
                                   loaded.model(input_ids=input_ids, attention_mask=mask).logits, rtol=0, atol=0)


def _wrapped(model_name, cache, pooling="auto"):
    model, tok = build_classifier(model_name, ["a", "b"], pooling=pooling)
    torch.manual_seed(0)
    return head.apply(model, head.Config(cache_dir=str(cache))), tok


def test_cache_invalidated_when_model_pooling_or_data_change(tmp_path, count_backbone):
    cache = tmp_path / "features"
    wrapper, tok = _wrapped("tiny-bert", cache)
    input_ids, mask = _batch(tok)
    wrapper(input_ids=input_ids, attention_mask=mask)
    wrapper(input_ids=input_ids, attention_mask=mask)
    assert count_backbone["examples"] == 4

    same, _ = _wrapped("tiny-bert", cache)  # a fresh process would see the same: cache on disk
    same(input_ids=input_ids, attention_mask=mask)
    assert count_backbone["examples"] == 4

    cls, _ = _wrapped("tiny-bert", cache, pooling="cls")  # pooling changed
    cls(input_ids=input_ids, attention_mask=mask)
    assert count_backbone["examples"] == 8

    changed, _ = _wrapped("tiny-bert", cache)  # one backbone weight changed
    with torch.no_grad():
        changed.model.bert.encoder.layer[0].output.dense.bias[0] += 1e-3
    changed(input_ids=input_ids, attention_mask=mask)
    assert count_backbone["examples"] == 12

    other_ids, other_mask = _batch(tok, ["a text never seen", "see you at lunch"])  # data changed (1 new)
    same(input_ids=other_ids, attention_mask=other_mask)
    assert count_backbone["examples"] == 13

    truncated = same(input_ids=input_ids[:, :3], attention_mask=mask[:, :3])  # max_length changes the tokens
    assert count_backbone["examples"] == 17 and truncated.logits.shape == (4, 2)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 3


@torch.no_grad()
def test_cached_logits_equal_the_plain_model(tmp_path):
    for name in ("tiny-bert", "tiny-llama"):
        wrapper, tok = _wrapped(name, tmp_path / "features")
        wrapper.eval()
        input_ids, mask = _batch(tok)
        first = wrapper(input_ids=input_ids, attention_mask=mask).logits  # computes and caches
        cached = wrapper(input_ids=input_ids, attention_mask=mask).logits  # from the cache
        plain = wrapper.model(input_ids=input_ids, attention_mask=mask).logits
        torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached, first, atol=0, rtol=0)


def test_head_needs_a_classifier():
    from tunelab.models import CAUSAL_LM, load_model

    model, _ = load_model("tiny-llama", CAUSAL_LM)
    with pytest.raises(TunelabError, match="needs stage classify, not a generative stage"):
        head.apply(model, head.Config())
