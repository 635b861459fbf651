"""Stage `dpo`: Direct Preference Optimization (Rafailov et al. 2023, eq. 7) on preference pairs.

    loss = -log sigmoid(beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))])

Why our own loss on the engine's Trainer rather than TRL's ``DPOTrainer``: the loss is a few
lines, and DPOTrainer owns what the engine already does — tokenisation, its own peft wrapping,
model/ref loading, saving and metrics — so using it would mean a second training path that
bypasses the methods registry and the run directory contract. The loss is tested against the
plain formula. The reference is the policy with its adapter off for peft methods (no second copy
of the weights), a frozen copy for ``full`` (see ``_reference``). The policy starts from the base
model, or from an SFT run (``stage.policy``), which is then also the reference.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.lazy import F, torch
from ..data.collate import pad_right
from ..data.tokenize import IGNORE
from ..models import CAUSAL_LM
from ._pairs import Meter, encode_prompt_response, eval_pairs, item_labels, load_pairs, metered_eval, read_eval_file
from ._reference import Reference, build_policy, sequence_logps
from .base import RunLink, StageConfig


class Config(StageConfig):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (0.1-0.5 typical; smaller: drift further).")
    policy: str | None = Field(None, description="A finished sft run to start from (merged into the base); also the reference.")
    nll_weight: float = Field(0.0, ge=0, description="Add this times the chosen responses' per-token NLL to the loss "
                              "(RPO; TRL's rpo_alpha, LLaMA-Factory's pref_ftx): keeps chosen likelihood from falling.")


MODEL_KIND = CAUSAL_LM
ACCEPTS = ("preference", "rating")
KEY_METRIC = "eval_accuracy"
LINKS = (RunLink("policy", "a language-model run (e.g. sft)", model_kind=CAUSAL_LM, builds_model=True),)


def encode_pair(tokenizer, pair: dict, max_length: int) -> dict:
    """One pair as an example; ``input_ids`` is the chosen sequence (also read for length-grouping)."""
    (chosen, chosen_start), (rejected, rejected_start) = (
        encode_prompt_response(tokenizer, pair["prompt"], pair[key], max_length) for key in ("chosen", "rejected"))
    return {"input_ids": chosen, "chosen_start": chosen_start, "rejected_ids": rejected, "rejected_start": rejected_start}


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    """Each example is one pair (``encode_pair``)."""
    train, eval_ = ([encode_pair(tokenizer, p, cfg.train.max_length) for p in pairs] for pairs in load_pairs(cfg, "dpo"))
    # Eval order does not change the metrics; sorted by length, eval batches carry little padding.
    return train, sorted(eval_, key=lambda e: max(len(e["input_ids"]), len(e["rejected_ids"])))


build_model = build_policy


class PairCollator:
    """Pairs -> 2B right-padded sequences (rows [0, B) chosen, [B, 2B) rejected); loss only on responses."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        sequences = [e["input_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        starts = [e["chosen_start"] for e in examples] + [e["rejected_start"] for e in examples]
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)
        response_labels = input_ids.masked_fill(attention_mask == 0, IGNORE)  # (2B, T)
        for row, start in enumerate(starts):
            response_labels[row, :start] = IGNORE
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_labels": response_labels,
                **item_labels(len(examples))}  # the Trainer counts pairs per step


def collate(tokenizer):
    return PairCollator(tokenizer.pad_token_id)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, num_pairs=None):
    """(loss, chosen_rewards, rejected_rewards); inputs are (B,) summed log-probs of each response.

    The implicit reward of a response is beta * (log pi - log ref).
    """
    chosen_rewards = beta * (policy_chosen.float() - ref_chosen.float())  # (B,)
    rejected_rewards = beta * (policy_rejected.float() - ref_rejected.float())
    total = -F.logsigmoid(chosen_rewards - rejected_rewards).sum()
    n = num_pairs if num_pairs is not None else chosen_rewards.numel()
    loss = total / torch.clamp(torch.as_tensor(n, device=total.device, dtype=total.dtype), min=1)
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def chosen_nll(policy_chosen: torch.Tensor, response_labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per chosen response token (rows [0, B) of the 2B labels)."""
    tokens = (response_labels[: policy_chosen.numel(), 1:] != IGNORE).sum()
    return -policy_chosen.float().sum() / tokens.clamp(min=1)


class DPOLoss:
    def __init__(self, policy, beta: float, nll_weight: float = 0.0, reference_model=None):
        self.reference = Reference(policy, reference_model)
        self.beta = beta
        self.nll_weight = nll_weight
        self.meter = Meter()

    def __call__(self, model, batch: dict, num_items_in_batch=None):
        args = (batch["input_ids"], batch["attention_mask"], batch["response_labels"])
        policy_chosen, policy_rejected = sequence_logps(model, *args).chunk(2)
        with self.reference.active() as reference:
            ref_chosen, ref_rejected = sequence_logps(reference, *args).chunk(2)
        loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                          self.beta, num_items_in_batch)
        training, n = model.training, chosen.numel()
        if self.nll_weight:
            nll = chosen_nll(policy_chosen, batch["response_labels"])
            # This micro-batch's share of the pairs, as the DPO term is normalised (grad accumulation, DDP).
            share = n / float(num_items_in_batch) if num_items_in_batch is not None else 1.0
            loss = loss + self.nll_weight * share * nll
            self.meter.add(training, "nll", nll.detach() * n, n)
        self.meter.add(training, "accuracy", (chosen > rejected).sum(), n)
        self.meter.add(training, "margin", (chosen - rejected).sum(), n)
        self.meter.add(training, "reward_chosen", chosen.sum(), n)
        self.meter.add(training, "reward_rejected", rejected.sum(), n)
        return loss, {"chosen_rewards": chosen, "rejected_rewards": rejected}

    def pop_metrics(self, training: bool) -> dict:
        return self.meter.pop(training, prefix="" if training else "eval_")


def make_loss(cfg, model, tokenizer, links=None):
    return DPOLoss(model, cfg.stage.beta, cfg.stage.nll_weight)


def compute_loss(model, batch: dict, num_items_in_batch=None):
    raise NotImplementedError("dpo needs a reference model: the engine builds its loss with make_loss()")


EVAL_OPTIONS = ()


def evaluate(loaded, name: str, file: str, options) -> dict:
    """Held-out preference accuracy (implicit reward of chosen > rejected) and mean reward margin.

    The reference is the starting policy: the adapter switched off, or (full fine-tuning) the
    base model or ``stage.policy`` built afresh.
    """
    fmt, rows = read_eval_file(name, file, options)
    pairs = eval_pairs(name, file, fmt, rows)
    cfg = loaded.config
    frozen = None if hasattr(loaded.model, "disable_adapter") else build_policy(cfg, options.links)[0]
    loss = DPOLoss(loaded.model, cfg.stage.beta, reference_model=frozen)
    examples = [encode_pair(loaded.tokenizer, p, cfg.train.max_length) for p in pairs]
    examples.sort(key=lambda e: max(len(e["input_ids"]), len(e["rejected_ids"])))
    metrics = metered_eval(loss, loaded.model, examples, PairCollator(loaded.tokenizer.pad_token_id), options.batch_size)
    return {"task": "preference", "file": file, "n": len(pairs), "preference_accuracy": metrics["accuracy"],
            "margin": metrics["margin"], "reward_chosen": metrics["reward_chosen"],
            "reward_rejected": metrics["reward_rejected"]}
