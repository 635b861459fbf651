"""Stage `classify`: pooling for both model kinds, heads, labels, class weights, init_from.

Data here is SYNTHETIC (a few made-up sentences); models are the tiny random ones.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunelab import TunelabError
from tunelab.data.collate import pad_right as pad_batch
from tunelab.models.classifier import build_classifier, pooled_features
from tunelab.config import load_config
from tunelab.training.engine import train
from tunelab.stages import classify

TEXTS = ["win a free prize now", "see you at lunch tomorrow then", "ok"]  # SYNTHETIC, different lengths


def _batch(tokenizer, texts=TEXTS):
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    input_ids, mask = pad_batch(encoded, tokenizer.pad_token_id)  # right padding
    return encoded, input_ids, mask


@torch.no_grad()
def test_decoder_pools_last_real_token_with_right_padding():
    model, tok = build_classifier("tiny-llama", ["ham", "spam"])
    model.eval()
    encoded, input_ids, mask = _batch(tok)
    assert (mask == 0).any(), "the batch must contain right padding"
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    for row, ids in enumerate(encoded):  # reference: each example alone, unpadded, last token
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(logits[row], model.score(hidden), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.score(pooled_features(model, input_ids, mask)), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@torch.no_grad()
def test_encoder_mean_and_cls_pooling(pooling):
    model, tok = build_classifier("tiny-bert", ["a", "b", "c"], pooling=pooling)
    model.eval()
    encoded, input_ids, mask = _batch(tok)
    features = pooled_features(model, input_ids, mask)  # (B, H)
    for row, ids in enumerate(encoded):
        hidden = model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, H), no padding
        expected = hidden.mean(dim=0) if pooling == "mean" else hidden[0]
        torch.testing.assert_close(features[row], expected, atol=1e-5, rtol=1e-5)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, model.classifier(features), atol=1e-6, rtol=1e-6)
    assert logits.shape == (3, 3)


def test_pooling_that_does_not_fit_the_model_is_an_error():
    with pytest.raises(TunelabError, match="stage.pooling=mean does not apply to decoder models"):
        build_classifier("tiny-llama", ["a", "b"], pooling="mean")
    with pytest.raises(TunelabError, match="stage.pooling=last does not apply to encoder models"):
        build_classifier("tiny-bert", ["a", "b"], pooling="last")


def test_mlp_head_and_label_names():
    model, _ = build_classifier("tiny-bert", ["x", "y", "z"], head="mlp", head_hidden=16)
    assert isinstance(model.classifier, torch.nn.Sequential)
    assert model.classifier[0].out_features == 16 and model.classifier[-1].out_features == 3
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}


def _rows(labels):
    return [{"text": f"message number {i} about {label}", "label": label} for i, label in enumerate(labels)]  # SYNTHETIC


def _config(tmp_path, rows, model="tiny-bert", method="full", **extra):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"model": model, "stage": {"name": "classify"}, "method": method,
           "data": {"train": str(data), "eval_fraction": 0.0},
           "train": {"max_steps": 2, "batch_size": 4, "max_length": 16, "lr": 1e-3, "save_steps": 0,
                     "eval_before": False, "logging_steps": 1},
           "output_dir": str(tmp_path / "runs"), **extra}
    return raw


def test_labels_are_learned_sorted_and_class_weights(tmp_path, tiny_tokenizer):
    raw = _config(tmp_path, _rows(["spam", "ham", "ham", "ham", "eggs", "ham"]))
    raw["stage"]["class_weights"] = "auto"
    cfg = load_config(raw)
    train_ds, eval_ds = classify.build_datasets(cfg, tiny_tokenizer)
    assert cfg.stage.labels == ["eggs", "ham", "spam"] and eval_ds == []
    weights = {cfg.stage.labels[e["label"]]: e["weight"] for e in train_ds}
    assert weights == {"eggs": pytest.approx(2.0), "ham": pytest.approx(0.5), "spam": pytest.approx(2.0)}
    assert sum(e["weight"] for e in train_ds) == pytest.approx(len(train_ds))  # mean weight 1

    raw["stage"]["class_weights"] = {"spam": 3.0}
    cfg = load_config(raw)
    train_ds, _ = classify.build_datasets(cfg, tiny_tokenizer)
    assert {cfg.stage.labels[e["label"]]: e["weight"] for e in train_ds}["spam"] == 3.0


def test_weighted_loss_matches_reference():
    model, tok = build_classifier("tiny-bert", ["a", "b"])
    model.eval()
    _, input_ids, mask = _batch(tok)
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([1, 0, 1]),
             "weights": torch.tensor([2.0, 0.5, 2.0])}
    loss, outputs = classify.compute_loss(model, batch)
    reference = torch.nn.functional.cross_entropy(outputs.logits, batch["labels"], weight=torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(loss, reference)  # per-class weights == per-example weights of its class


def test_single_class_and_unknown_labels_are_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(TunelabError, match="at least two classes"):
        classify.build_datasets(load_config(_config(tmp_path, _rows(["ham"] * 4))), tiny_tokenizer)
    raw = _config(tmp_path, _rows(["ham", "spam", "eggs"]))
    raw["stage"]["labels"] = ["ham", "spam"]
    with pytest.raises(TunelabError, match=r"labels \['eggs'\] not in stage.labels"):
        classify.build_datasets(load_config(raw), tiny_tokenizer)


@pytest.mark.parametrize("model, method", [("tiny-bert", "lora"), ("tiny-llama", "full")])
def test_init_from_starts_from_the_previous_weights(tmp_path, model, method):
    from tunelab.runs.open import load
    from tunelab.methods import METHODS
    from tunelab.training.warm_start import load_weights

    first = train(_config(tmp_path, _rows(["ham", "spam"] * 4), model=model, method=method, name="first"), quiet=True)
    raw = _config(tmp_path, _rows(["spam", "ham"] * 3), model=model, method=method, name="second",
                  init_from=str(first))
    cfg = load_config(raw)
    classify.build_datasets(cfg, load(first).tokenizer)
    assert cfg.stage.labels == ["ham", "spam"]
    fresh, tok = classify.build_model(cfg)
    fresh = METHODS[method].apply(fresh, cfg.method)
    load_weights(fresh, cfg)
    _, input_ids, mask = _batch(tok)
    previous = load(first).model
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=input_ids, attention_mask=mask).logits,
                                   previous(input_ids=input_ids, attention_mask=mask).logits)
    second = train(raw, quiet=True)  # and the whole path through the engine
    saved = yaml.safe_load((second / "config.yaml").read_text())
    assert saved["init_from"] == str(first) and saved["stage"]["labels"] == ["ham", "spam"]


def test_init_from_incompatible_runs(tmp_path):
    first = train(_config(tmp_path, _rows(["ham", "spam"] * 4), name="first"), quiet=True)
    other_model = _config(tmp_path, _rows(["ham", "spam"] * 4), model="tiny-llama", name="x", init_from=str(first))
    with pytest.raises(TunelabError, match="was trained from model 'tiny-bert', this run uses 'tiny-llama'"):
        train(other_model, quiet=True)
    other_labels = _config(tmp_path, _rows(["ham", "eggs"] * 4), name="y", init_from=str(first))
    with pytest.raises(TunelabError, match=r"labels \['eggs'\] not in the labels of run"):
        train(other_labels, quiet=True)
    other_method = _config(tmp_path, _rows(["ham", "spam"] * 4), method="lora", name="z", init_from=str(first))
    with pytest.raises(TunelabError, match="used method 'full', this run uses 'lora'"):
        train(other_method, quiet=True)
    with pytest.raises(TunelabError, match="is not a run directory"):
        train(_config(tmp_path, _rows(["ham", "spam"] * 4), name="w", init_from=str(tmp_path)), quiet=True)


def test_a_two_source_mix_trains_from_the_cli_and_init_from_replays_it(tmp_path, cli):
    """SYNTHETIC sms/email rows; email alone has the label 'promo', so the mixed run learns three labels."""
    from conftest import write_config, write_rows

    sms = write_rows(tmp_path / "sms.jsonl", _rows(["ham", "spam"] * 12))
    email = write_rows(tmp_path / "email.jsonl", _rows(["ham", "spam", "promo"] * 10))
    raw = _config(tmp_path, [], method="lora", name="mixed")
    raw["data"] = {"train": [str(sms), {"path": str(email), "fraction": 0.25}], "eval_fraction": 0.25}
    rc, out, err = cli("train", write_config(tmp_path / "mixed.yaml", raw), "--quiet")
    assert rc == 0, err[-3000:]
    first = tmp_path / "runs" / "mixed"
    assert out.strip().splitlines()[-1] == str(first)
    summary = json.loads((first / "summary.json").read_text())
    assert (summary["train_examples"], summary["eval_examples"]) == (24, 6)  # 18 sms + 6 email; eval: sms only
    saved = load_config(first / "config.yaml")  # the mix round-trips through the run's config.yaml
    assert saved.data.train[1].fraction == 0.25 and saved.stage.labels == ["ham", "promo", "spam"]

    again = _config(tmp_path, [], method="lora", name="replayed", init_from=str(first))
    again["data"] = {"train": str(sms), "replay": {"train": str(email), "fraction": 0.5}, "eval_fraction": 0.25}
    second = train(again, quiet=True)
    assert json.loads((second / "summary.json").read_text())["train_examples"] == 36  # 18 sms / 0.5
    assert load_config(second / "config.yaml").stage.labels == ["ham", "promo", "spam"]  # inherited
