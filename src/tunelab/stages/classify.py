"""Stage `classify`: a decoder LLM or an encoder, pooled, with a new classification head."""
from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from ..core.lazy import F, np, torch
from ..data import load_examples, load_file
from ..data.collate import pad_right
from ..models import SEQ_CLS
from .base import EvalOptions, StageConfig, cap


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


def inherit(cfg, previous) -> None:
    """A run started from an earlier classify run (``init_from``) keeps its head, pooling and labels."""
    for key in ("head", "pooling"):
        if getattr(previous.stage, key) != getattr(cfg.stage, key):
            raise TunelabError(f"init_from: run {cfg.init_from} has stage.{key}={getattr(previous.stage, key)}, "
                               f"this run has {getattr(cfg.stage, key)}")
    if cfg.stage.labels is not None and cfg.stage.labels != previous.stage.labels:
        raise TunelabError(f"init_from: run {cfg.init_from} has labels {previous.stage.labels}, this run {cfg.stage.labels}")
    cfg.stage.labels = previous.stage.labels


def _labels(cfg, train: list[dict], eval_: list[dict]) -> list[str]:
    """The label set, in index order: given (or inherited from init_from), or learned from train."""
    seen = sorted({row["label"] for row in train})
    if cfg.stage.labels is not None:
        labels = cfg.stage.labels
        origin = f"the labels of run {cfg.init_from}" if cfg.init_from else "stage.labels"
    else:
        labels, origin = seen, "the training labels"
    if len(seen) < 2:
        raise TunelabError(f"data {cfg.data.describe()}: every training example has label '{seen[0]}'; "
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

    from ..inference.classify import encode_texts

    def encode(rows):
        ids = encode_texts(tokenizer, [row["text"] for row in rows], cfg.train.max_length) if rows else []
        return [{"input_ids": i, "label": index[row["label"]], "weight": weights[row["label"]]} for i, row in zip(ids, rows)]

    return encode(examples.train), encode(examples.eval)


def build_model(cfg, links=None):
    """(model, tokenizer): the backbone with this stage's pooling and a new head for ``cfg.stage.labels``."""
    from ..models.classifier import build_classifier

    if not cfg.stage.labels:
        raise TunelabError("stage.labels is unset; build the datasets first (they learn the labels)")
    s = cfg.stage
    return build_classifier(cfg.model, s.labels, s.head, s.pooling, s.head_hidden, s.head_dropout)


class ClassifyCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        input_ids, attention_mask = pad_right([e["input_ids"] for e in examples], self.pad_token_id)
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


# --------------------------------------------------------------------------- evaluation

EVAL_OPTIONS = ("threshold", "positive")


def evaluate_classifier(predict_proba, labels: list[str], name: str, file: str, options: EvalOptions) -> dict:
    """Accuracy, per-class P/R/F1, macro/micro, confusion matrix (and ROC/PR-AUC for two labels) on one file.

    ``predict_proba(texts) -> (N, L)`` probabilities; shared with baselines that classify.
    """
    from ..core.metrics import classification_report

    binary = len(labels) == 2
    if (options.threshold is not None or options.positive is not None) and not binary:
        raise TunelabError(f"--threshold/--positive apply to two-label tasks; this run has {len(labels)} labels")
    if options.threshold is not None and not 0.0 <= options.threshold <= 1.0:
        raise TunelabError(f"--threshold must be between 0 and 1 (got {options.threshold})")
    if options.positive is not None and options.positive not in labels:
        raise TunelabError(f"--positive {options.positive}: not a label of this run ({', '.join(labels)})")
    # Default positive class: the second label in sorted order (spam of ham/spam; 1 of 0/1), as scikit-learn does.
    positive_index = labels.index(options.positive if options.positive is not None else sorted(labels)[1]) \
        if binary else None
    rows = read_labelled(name, file, labels, options)
    probs = predict_proba([row["text"] for row in rows]).numpy()
    y_true = np.array([labels.index(row["label"]) for row in rows])
    report = classification_report(labels, y_true, probs, positive_index, options.threshold)
    return {"task": "classification", "file": file, **report}


def read_labelled(name: str, file: str, known: list[str], options: EvalOptions) -> list[dict]:
    """A labelled test file, every label one the model knows."""
    _, rows = load_file(file, "classification")
    rows = cap(rows, options)
    unknown = sorted({row["label"] for row in rows} - set(known))
    if unknown:
        raise TunelabError(f"--data {name}={file} has labels {unknown} the model never saw (it knows: {', '.join(known)})")
    return rows


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    """The classifier's report on one file; the adapter merged once, on a copy kept for the whole eval."""
    from ..inference.classify import predict_proba
    from ..methods.inference import inference_model

    max_length = loaded.config.train.max_length

    def probabilities(texts):
        model = inference_model(loaded.model, loaded.cache)  # after the checks: a bad file costs no copy
        return predict_proba(model, loaded.tokenizer, texts, max_length, options.batch_size)

    return evaluate_classifier(probabilities, loaded.config.stage.labels, name, file, options)
