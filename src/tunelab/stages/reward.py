"""Stage `reward`: a reward model — a backbone with a scalar head — trained on preference pairs.

Loss: Bradley–Terry (Bradley & Terry 1952; as in Ouyang et al. 2022, eq. 1):
``-log sigmoid(r(x, y_chosen) - r(x, y_rejected))``. The model is the classify stage's
sequence classifier (same pooling rules, same methods: head / lora / full / ...) with one
output. Reads `preference` data, or `rating` data (prompt, response, score) turned into pairs.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.lazy import F, torch
from ..data.collate import pad_right
from ..models import SEQ_CLS
from ._pairs import Meter, encode_prompt_response, eval_pairs, item_labels, load_pairs, read_eval_file
from .base import StageConfig

LABELS = ["reward"]  # one output: the scalar reward


class Config(StageConfig):
    name: Literal["reward"] = "reward"
    head: Literal["linear", "mlp"] = Field("linear", description="Scalar head: one linear layer, or linear-GELU-linear.")
    head_hidden: int | None = Field(None, ge=1, description="MLP head width (default: the backbone's hidden size).")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the MLP head (0: a reward should be deterministic).")
    pooling: Literal["auto", "last", "mean", "cls"] = Field(
        "auto", description="auto: last non-padding token for decoders, mean over tokens for encoders; cls: first token."
    )


MODEL_KIND = SEQ_CLS
ACCEPTS = ("preference", "rating")
KEY_METRIC = "eval_accuracy"


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    """Each example is one pair: ``input_ids`` (chosen; also what length-grouping reads) and ``rejected_ids``."""
    train, eval_ = load_pairs(cfg, "reward")
    n = cfg.train.max_length
    return build_examples(tokenizer, train, n), build_examples(tokenizer, eval_, n)


def build_examples(tokenizer, pairs: list[dict], max_length: int) -> list[dict]:
    return [{"input_ids": encode_prompt_response(tokenizer, p["prompt"], p["chosen"], max_length)[0],
             "rejected_ids": encode_prompt_response(tokenizer, p["prompt"], p["rejected"], max_length)[0]}
            for p in pairs]


def build_model(cfg, links=None):
    from ..models.classifier import build_classifier

    s = cfg.stage
    return build_classifier(cfg.model, LABELS, s.head, s.pooling, s.head_hidden, s.head_dropout)


class PairCollator:
    """Pairs -> one batch of 2B sequences: rows [0, B) chosen, rows [B, 2B) rejected."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        sequences = [e["input_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                **item_labels(len(examples))}  # the Trainer counts pairs per step


def collate(tokenizer):
    return PairCollator(tokenizer.pad_token_id)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, num_pairs=None) -> torch.Tensor:
    """Sum of -log sigmoid(r_chosen - r_rejected) over pairs / num_pairs (default: mean); (B,), (B,) -> ()."""
    total = -F.logsigmoid(chosen.float() - rejected.float()).sum()
    n = num_pairs if num_pairs is not None else chosen.numel()
    return total / torch.clamp(torch.as_tensor(n, device=total.device, dtype=total.dtype), min=1)


def rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (B,) for a batch of sequences."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


class PairwiseLoss:
    """The Bradley–Terry loss, also measuring pairwise accuracy and mean margin (r_chosen - r_rejected)."""

    def __init__(self):
        self.meter = Meter()

    def __call__(self, model, batch: dict, num_items_in_batch=None):
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        chosen, rejected = outputs.logits[:, 0].chunk(2)  # (2B,) -> (B,), (B,)
        margin = (chosen - rejected).detach().float()
        self.meter.add(model.training, "accuracy", (margin > 0).sum(), margin.numel())
        self.meter.add(model.training, "margin", margin.sum(), margin.numel())
        return bradley_terry_loss(chosen, rejected, num_items_in_batch), outputs

    def pop_metrics(self, training: bool) -> dict:
        return self.meter.pop(training, prefix="" if training else "eval_")


def make_loss(cfg, model, tokenizer, links=None):
    return PairwiseLoss()


def compute_loss(model, batch: dict, num_items_in_batch=None):
    return PairwiseLoss()(model, batch, num_items_in_batch)


# --------------------------------------------------------------------------- scoring and evaluation

EVAL_OPTIONS = ()


def sequence_rewards(model, tokenizer, sequences: list[list[int]], max_tokens: int) -> list[float]:
    """Rewards of token sequences, in their order: packed without padding where the model allows it."""
    from ._scoring import classifier_logits

    return classifier_logits(model, sequences, max_tokens, tokenizer.pad_token_id)[:, 0].tolist()


def score(loaded, prompts: list[str], responses: list[str], batch_size: int = 16) -> list[float]:
    """The rewards a trained reward run gives responses to prompts (``tunelab score``, RLHF, eval).

    The adapter is merged once, into a copy kept in ``loaded.cache`` (the reward model is frozen:
    RLHF scores with it every step); at most ``batch_size x max_length`` tokens per forward.
    """
    from ..methods.inference import inference_model

    tokenizer, max_length = loaded.tokenizer, loaded.config.train.max_length
    encoded = [encode_prompt_response(tokenizer, p, r, max_length)[0] for p, r in zip(prompts, responses)]
    return sequence_rewards(inference_model(loaded.model, loaded.cache), tokenizer, encoded, batch_size * max_length)


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """Pairwise accuracy (share of pairs with r_chosen > r_rejected) and mean margin, as PairwiseLoss meters them."""
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins)}


def evaluate(loaded, name: str, file: str, options) -> dict:
    """Preference pairs: pairwise accuracy and mean margin. Ratings: also rank correlation with the scores.

    Every chosen and rejected sequence is scored once, packed (see ``sequence_rewards``), by the
    run's model with its adapter merged once for the file; the run's own model is left as it is.
    """
    from scipy.stats import kendalltau, spearmanr

    from ..methods.inference import inference_model

    fmt, rows = read_eval_file(name, file, options)
    pairs = eval_pairs(name, file, fmt, rows)
    tokenizer, max_length = loaded.tokenizer, loaded.config.train.max_length
    examples = build_examples(tokenizer, pairs, max_length)
    model = inference_model(loaded.model, loaded.cache)
    budget = options.batch_size * max_length
    scores = sequence_rewards(model, tokenizer, [e["input_ids"] for e in examples] +
                              [e["rejected_ids"] for e in examples], budget)
    metrics = pair_metrics(scores[: len(examples)], scores[len(examples):])
    report = {"task": "reward", "file": file, "n": len(pairs), "pairwise_accuracy": metrics["accuracy"],
              "margin": metrics["margin"]}
    if fmt == "rating":
        encoded = [encode_prompt_response(tokenizer, r["prompt"], r["response"], max_length)[0] for r in rows]
        scores = sequence_rewards(model, tokenizer, encoded, budget)
        ratings = [r["score"] for r in rows]
        report.update({"ratings": len(rows), "spearman": float(spearmanr(scores, ratings).statistic),
                       "kendall_tau": float(kendalltau(scores, ratings).statistic)})
    return report
