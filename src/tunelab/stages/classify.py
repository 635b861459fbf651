"""Stage `classify`: a decoder LLM or an encoder, pooled, with a new classification head."""
from __future__ import annotations

from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..classifier import build_classifier, encode_texts, pad_batch
from ..data import load_examples
from ..errors import TunelabError
from ..models import SEQ_CLS
from .base import StageConfig


class Config(StageConfig):
    name: Literal["classify"] = "classify"
    labels: list[str] | None = Field(
        None, description="Label names in class-index order; learned (sorted) from the training data when unset."
    )
    head: Literal["linear", "mlp"] = Field("linear", description="New head: one linear layer, or linear-GELU-linear.")
    head_hidden: int | None = Field(None, ge=1, description="MLP head width (default: the backbone's hidden size).")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the MLP head.")
    pooling: Literal["auto", "last", "mean", "cls"] = Field(
        "auto", description="auto: last non-padding token for decoders, mean over tokens for encoders; cls: first token."
    )
    class_weights: Literal["auto", "none"] | dict[str, float] = Field(
        "none", description="Loss weight per class: none, auto (inverse frequency, mean 1), or {label: weight}."
    )


MODEL_KIND = SEQ_CLS
ACCEPTS = ("classification",)
KEY_METRIC = "eval_loss"


def _labels(cfg, train: list[dict], eval_: list[dict]) -> list[str]:
    """The label set, in index order: given, inherited from init_from, or learned from train."""
    seen = sorted({row["label"] for row in train})
    if cfg.init_from:
        from ..warm_start import previous_config

        inherited = previous_config(cfg).stage
        for key in ("head", "pooling"):
            if getattr(inherited, key) != getattr(cfg.stage, key):
                raise TunelabError(f"init_from: run {cfg.init_from} has stage.{key}={getattr(inherited, key)}, "
                                   f"this run has {getattr(cfg.stage, key)}")
        if cfg.stage.labels is not None and cfg.stage.labels != inherited.labels:
            raise TunelabError(f"init_from: run {cfg.init_from} has labels {inherited.labels}, this run {cfg.stage.labels}")
        labels, origin = inherited.labels, f"the labels of run {cfg.init_from}"
    elif cfg.stage.labels is not None:
        labels, origin = cfg.stage.labels, "stage.labels"
    else:
        labels, origin = seen, "the training labels"
    if len(seen) < 2:
        raise TunelabError(f"data {cfg.data.train}: every training example has label '{seen[0]}'; "
                           f"a classifier needs at least two classes")
    for split, rows in (("train", train), ("eval", eval_)):
        unknown = sorted({row["label"] for row in rows} - set(labels))
        if unknown:
            raise TunelabError(f"data ({split}) has labels {unknown} not in {origin} {labels}")
    return labels


def _class_weights(setting, labels: list[str], train: list[dict]) -> dict[str, float]:
    if setting == "none":
        return {label: 1.0 for label in labels}
    if setting == "auto":  # inverse frequency, scaled so the mean weight over train examples is 1
        counts = Counter(row["label"] for row in train)
        return {label: len(train) / (len(labels) * counts[label]) if counts[label] else 1.0 for label in labels}
    unknown = sorted(set(setting) - set(labels))
    if unknown:
        raise TunelabError(f"stage.class_weights names labels {unknown} that are not in {labels}")
    return {label: float(setting.get(label, 1.0)) for label in labels}


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    """Tokenised {input_ids, label, weight} examples; fills ``cfg.stage.labels`` (kept in config.yaml)."""
    data_cfg = cfg.data if cfg.data.format != "auto" else cfg.data.model_copy(update={"format": "classification"})
    examples = load_examples(data_cfg, cfg.train.seed, ACCEPTS)
    labels = _labels(cfg, examples.train, examples.eval)
    weights = _class_weights(cfg.stage.class_weights, labels, examples.train)
    cfg.stage.labels = labels
    index = {label: i for i, label in enumerate(labels)}

    def encode(rows):
        ids = encode_texts(tokenizer, [row["text"] for row in rows], cfg.train.max_length) if rows else []
        return [{"input_ids": i, "label": index[row["label"]], "weight": weights[row["label"]]} for i, row in zip(ids, rows)]

    return encode(examples.train), encode(examples.eval)


def build_model(cfg):
    """(model, tokenizer): the backbone with this stage's pooling and a new head for ``cfg.stage.labels``."""
    if not cfg.stage.labels:
        raise TunelabError("stage.labels is unset; build the datasets first (they learn the labels)")
    s = cfg.stage
    return build_classifier(cfg.model, s.labels, s.head, s.pooling, s.head_hidden, s.head_dropout)


class ClassifyCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
            "weights": torch.tensor([e["weight"] for e in examples], dtype=torch.float32),
        }


def collate(tokenizer):
    return ClassifyCollator(tokenizer.pad_token_id)


def compute_loss(model, batch: dict, num_items_in_batch=None):
    """Class-weighted cross-entropy on the pooled logits.

    Divided by the number of examples in the whole accumulated batch when the Trainer gives it
    (so gradient accumulation matches one big batch); auto weights average 1, keeping the scale.
    """
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    per_example = F.cross_entropy(outputs.logits.float(), batch["labels"], reduction="none")  # (B,)
    weighted = (per_example * batch["weights"]).sum()
    denominator = num_items_in_batch if num_items_in_batch is not None else batch["weights"].sum()
    return weighted / torch.clamp(torch.as_tensor(denominator, device=weighted.device, dtype=weighted.dtype), min=1e-8), outputs
