"""Stage `reward`: a reward model — a backbone with a scalar head — trained on preference pairs.

Loss: Bradley–Terry (Bradley & Terry 1952; as in Ouyang et al. 2022, eq. 1):
``-log sigmoid(r(x, y_chosen) - r(x, y_rejected))``. The model is the classify stage's
sequence classifier (same pooling rules, same methods: head / lora / full / ...) with one
output. Reads `preference` data, or `rating` data (prompt, response, score) turned into pairs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..classifier import build_classifier
from ..errors import TunelabError
from ..models import SEQ_CLS
from ._pairs import Meter, encode_prompt_response, item_labels, load_pairs, pad_right
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

    def encode(pairs):
        return [{"input_ids": encode_prompt_response(tokenizer, p["prompt"], p["chosen"], n)[0],
                 "rejected_ids": encode_prompt_response(tokenizer, p["prompt"], p["rejected"], n)[0]} for p in pairs]

    return encode(train), encode(eval_)


def build_model(cfg):
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


def make_loss(cfg, model, tokenizer):
    return PairwiseLoss()


def compute_loss(model, batch: dict, num_items_in_batch=None):
    return PairwiseLoss()(model, batch, num_items_in_batch)


# --------------------------------------------------------------------------- scoring


def check_reward_run(run_dir: str | Path, what: str = "reward model") -> Path:
    """A finished run of stage `reward` (checked from its files, without loading weights)."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TunelabError(f"{what} {run_dir} is not a run directory (no config.yaml)")
    stage = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("stage")
    stage = stage.get("name") if isinstance(stage, dict) else stage
    if stage != "reward":
        raise TunelabError(f"{what}: run {run_dir} is a {stage} run, not a reward model (train one with stage: reward)")
    if not (run_dir / "summary.json").is_file():
        raise TunelabError(f"{what}: run {run_dir} has not finished (no summary.json)")
    return run_dir


class RewardModel:
    """A trained reward run, ready to score (prompt, response) pairs."""

    def __init__(self, run_dir: str | Path):
        from ..inference import load

        run_dir = check_reward_run(run_dir)
        loaded = load(run_dir)
        self.model, self.tokenizer, self.run_dir = loaded.model.eval(), loaded.tokenizer, run_dir
        self.max_length = loaded.config.train.max_length
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 16) -> list[float]:
        encoded = [encode_prompt_response(self.tokenizer, p, r, self.max_length)[0] for p, r in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_right(encoded[start : start + batch_size], self.tokenizer.pad_token_id)
            out += rewards(self.model, ids.to(device), mask.to(device)).float().cpu().tolist()
        return out


def score(run_dir: str | Path, prompt: str, response: str) -> float:
    """``tunelab score``: the reward a trained reward run gives one response to one prompt."""
    return RewardModel(run_dir).score([prompt], [response])[0]
