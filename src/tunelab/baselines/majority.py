"""Majority-class baseline: always the most frequent training label — the floor every classifier must beat.

No model: its "probabilities" are the training label frequencies, so it predicts the majority
label for every input (ROC/PR-AUC are 0.5 by construction). ``tunelab compare`` lists it beside
the other approaches; a classifier that does not beat it has learned nothing usable.
"""
from __future__ import annotations

from collections import Counter

from pydantic import Field

from ..core.errors import TunelabError
from ..core.schema import StrictModel
from ..models import SEQ_CLS
from ..stages import classify
from ..stages.base import EvalOptions


class Config(StrictModel):
    """Where the training labels come from."""

    train: str = Field(description="Labelled training file whose label frequencies the baseline predicts.")
    labels: list[str] | None = Field(None, description="Label names in index order (default: sorted from train).")
    fields: dict[str, str] = Field(default_factory=dict, description="Train file columns, CANONICAL=COLUMN.")


class LabelPrior:
    """The baseline's 'model': training label frequencies, no parameters."""

    def __init__(self, labels: list[str], counts: Counter):
        self.labels, self.counts = labels, counts
        total = sum(counts.values())
        self.prior = [counts[label] / total for label in labels]

    def eval(self) -> "LabelPrior":
        return self

    def parameters(self):
        return iter(())

    def predict_proba(self, texts: list[str]):
        from ..core.lazy import torch

        return torch.tensor([self.prior] * len(texts), dtype=torch.float32)


def task(cfg: Config) -> str:
    return "classify"


def model_kind(cfg: Config) -> str:
    return SEQ_CLS


def eval_options(cfg: Config) -> tuple[str, ...]:
    return classify.EVAL_OPTIONS


def build(cfg: Config):
    """(LabelPrior, None): the label frequencies of ``cfg.train``."""
    from ..data import load_file

    fmt, rows = load_file(cfg.train, "classification", cfg.fields)
    counts = Counter(row["label"] for row in rows)
    labels = cfg.labels or sorted(counts)
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise TunelabError(f"train {cfg.train} has labels {unknown} that are not in labels {labels}")
    if len(labels) < 2:
        raise TunelabError(f"train {cfg.train}: every example has label '{labels[0]}'; give at least two classes")
    return LabelPrior(labels, counts), None


def check(cfg: Config, model: LabelPrior, tokenizer) -> dict:
    if cfg.labels is None:
        cfg.labels = model.labels  # kept in config.yaml, so evaluation needs no second read of train
    return {"labels": model.labels, "label_counts": dict(model.counts),
            "majority_label": max(model.labels, key=lambda label: model.counts[label])}


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    prior = loaded.model if isinstance(loaded.model, LabelPrior) else build(loaded.config)[0]
    return classify.evaluate_classifier(prior.predict_proba, loaded.config.labels, name, file, options)
