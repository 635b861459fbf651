"""Stage `rlhf`: optimise a policy against a trained reward model, with a KL penalty to the reference.

Algorithm: RLOO — REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, eq. 4;
Kool et al. 2019). For each prompt the policy samples k responses; each gets the KL-penalised
return ``R = r(x, y) - beta * (log pi(y|x) - log ref(y|x))``; its advantage is R minus the mean
return of the other k-1 samples; the loss is ``-advantage * log pi(y|x)``.

Why RLOO, and why on the engine's Trainer rather than TRL's RLOOTrainer/GRPOTrainer: TRL 1.x
has no PPO, and RLOO is what its RLOO trainer implements — no value network (PPO's critic would
double the trainable model), one sample-level baseline that is unbiased, and robust at the
tiny batch sizes a CPU can afford. But TRL's trainers load and peft-wrap their own model, keep
their own reference and save their own way; here the engine's method (lora/full/...) stays the
one place adaptation happens, the reference is the policy with its adapter off (no second
copy), and the run directory is the same as every other stage's. The loop is ~60 lines below.

Logged per step: ``reward`` (mean reward-model score), ``kl`` (mean summed log-ratio to the
reference), ``response_length`` (tokens). Eval on held-out prompts, greedy: ``eval_reward`` of
the policy, ``eval_ref_reward`` of the reference (= the starting policy), ``eval_win_rate`` of
the policy over the reference as judged by the reward model (ties count half), ``eval_kl``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.lazy import torch

from ..data import load_examples
from ..data.tokenize import IGNORE
from ..core.errors import TunelabError
from ..models import CAUSAL_LM
from ..data.collate import pad_right
from .reward import score as reward_score
from ._pairs import Meter, encode_prompt, item_labels, metered_eval
from ._reference import Reference, _unwrap, build_policy, sequence_logps
from .base import RunLink, StageConfig


class Config(StageConfig):
    name: Literal["rlhf"] = "rlhf"
    reward_model: str | None = Field(None, description="A finished `reward` run that scores the policy's responses (required).")
    policy: str | None = Field(None, description="A finished sft run to start from (merged into the base); also the reference.")
    beta: float = Field(0.05, ge=0, description="KL penalty towards the reference (0.01-0.1 typical; 0: no penalty).")
    samples_per_prompt: int = Field(4, ge=2, description="k responses per prompt; each is baselined by the other k-1.")
    max_new_tokens: int = Field(48, ge=1, description="Longest response the policy may generate.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature while training (1: the policy's own distribution).")


MODEL_KIND = CAUSAL_LM
ACCEPTS = ("preference", "rating")  # only their prompts are used
KEY_METRIC = "eval_reward"
LINKS = (
    RunLink("reward_model", "a finished reward run (train one with stage: reward)", stage="reward",
            same_model=False, required=True),
    RunLink("policy", "a language-model run (e.g. sft)", model_kind=CAUSAL_LM, builds_model=True),
)


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    """Unique prompts, tokenised with the chat template and cut from the left to leave room for the response."""
    examples = load_examples(cfg.data, cfg.train.seed, ACCEPTS)
    room = cfg.train.max_length - cfg.stage.max_new_tokens
    if room < 8:
        raise TunelabError(f"train.max_length={cfg.train.max_length} leaves no room for a prompt after "
                           f"stage.max_new_tokens={cfg.stage.max_new_tokens}")

    def encode(rows):
        prompts = list(dict.fromkeys(row["prompt"] for row in rows))
        return [{"input_ids": encode_prompt(tokenizer, p, room), "prompt": p} for p in prompts]

    return encode(examples.train), encode(examples.eval)


build_model = build_policy


class PromptCollator:
    """Left-padded prompts (generation appends on the right) + the prompt texts for the reward model."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        ids, mask = pad_right([e["input_ids"] for e in examples], self.pad_token_id, left=True)
        return {"input_ids": ids, "attention_mask": mask, "prompts": [e["prompt"] for e in examples],
                **item_labels(len(examples))}  # the Trainer counts prompts per step


def collate(tokenizer):
    return PromptCollator(tokenizer.pad_token_id)


def rloo_advantages(returns: torch.Tensor) -> torch.Tensor:
    """(B, k) returns -> (B, k) advantages: each return minus the mean of the other k-1."""
    k = returns.shape[1]
    baseline = (returns.sum(dim=1, keepdim=True) - returns) / (k - 1)
    return returns - baseline


class RLOOLoss:
    def __init__(self, cfg, policy, tokenizer, reward_model, reference_model=None):
        """``reward_model``: the loaded reward run; ``reference_model``: see :class:`Reference`."""
        self.cfg, self.tokenizer = cfg.stage, tokenizer
        self.reference = Reference(policy, reference_model)
        self.reward_model = reward_model
        for param in reward_model.model.parameters():
            param.requires_grad_(False)
        self.meter = Meter()

    def _generate(self, model, ids, mask, sample: bool):
        model = _unwrap(model)
        was_training = model.training
        model.eval()
        options = ({"do_sample": True, "temperature": self.cfg.temperature, "top_k": 0, "top_p": 1.0,
                    "num_return_sequences": self.cfg.samples_per_prompt} if sample else {"do_sample": False})
        try:
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.cfg.max_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                     **options)
        finally:
            model.train(was_training)
        return out

    def _responses(self, seqs, prompt_mask):
        """Masks and texts of generated responses: each ends at (and includes) its first EOS."""
        width = prompt_mask.shape[1]
        completion = seqs[:, width:]  # (N, C)
        is_eos = completion == self.tokenizer.eos_token_id
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion.shape[1])  # (N,)
        keep = torch.arange(completion.shape[1], device=seqs.device)[None] <= first_eos[:, None]  # (N, C)
        mask = torch.cat([prompt_mask, keep.long()], dim=1)  # (N, P + C)
        labels = seqs.masked_fill(mask == 0, IGNORE)
        labels[:, :width] = IGNORE
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at each row's first token
        texts = self.tokenizer.batch_decode(completion.masked_fill(~keep, self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        return mask, labels, positions, texts, keep.sum(1).float()

    def _log_ratio(self, model, seqs, mask, labels, positions):
        logps = sequence_logps(model, seqs, mask, labels, positions)  # (N,) with grad when training
        with self.reference.active() as reference:
            ref_logps = sequence_logps(reference, seqs, mask, labels, positions)
        return logps, logps.detach() - ref_logps

    def __call__(self, model, batch: dict, num_items_in_batch=None):
        if not model.training:
            return self._evaluate(model, batch)
        ids, prompt_mask, k = batch["input_ids"], batch["attention_mask"], self.cfg.samples_per_prompt
        seqs = self._generate(model, ids, prompt_mask, sample=True)  # (B*k, P + C), prompt-major
        mask, labels, positions, texts, lengths = self._responses(seqs, prompt_mask.repeat_interleave(k, 0))
        logps, kl = self._log_ratio(model, seqs, mask, labels, positions)
        prompts = [p for p in batch["prompts"] for _ in range(k)]
        rewards = torch.tensor(reward_score(self.reward_model, prompts, texts), device=logps.device)  # (B*k,)
        returns = (rewards - self.cfg.beta * kl).view(-1, k)  # (B, k)
        advantages = rloo_advantages(returns).view(-1)
        n = (num_items_in_batch if num_items_in_batch is not None else ids.shape[0]) * k
        loss = -(advantages * logps).sum() / torch.clamp(torch.as_tensor(n, device=logps.device, dtype=logps.dtype), min=1)
        for name, values in (("reward", rewards), ("kl", kl), ("response_length", lengths)):
            self.meter.add(True, name, values.sum(), values.numel())
        return loss, {"rewards": rewards}

    def _evaluate(self, model, batch: dict):
        ids, prompt_mask, prompts = batch["input_ids"], batch["attention_mask"], batch["prompts"]
        seqs = self._generate(model, ids, prompt_mask, sample=False)
        mask, labels, positions, texts, lengths = self._responses(seqs, prompt_mask)
        _, kl = self._log_ratio(model, seqs, mask, labels, positions)
        with self.reference.active() as reference:
            ref_seqs = self._generate(reference, ids, prompt_mask, sample=False)
        ref_texts = self._responses(ref_seqs, prompt_mask)[3]
        rewards = torch.tensor(reward_score(self.reward_model, prompts, texts))
        ref_rewards = torch.tensor(reward_score(self.reward_model, prompts, ref_texts))
        wins = (rewards > ref_rewards).float() + 0.5 * (rewards == ref_rewards).float()
        for name, values in (("reward", rewards), ("ref_reward", ref_rewards), ("win_rate", wins),
                             ("kl", kl), ("response_length", lengths)):
            self.meter.add(False, name, values.sum(), values.numel())
        return -rewards.mean().to(ids.device), {"rewards": rewards}

    def pop_metrics(self, training: bool) -> dict:
        return self.meter.pop(training, prefix="" if training else "eval_")


def make_loss(cfg, model, tokenizer, links):
    return RLOOLoss(cfg, model, tokenizer, links["reward_model"])


def compute_loss(model, batch: dict, num_items_in_batch=None):
    raise NotImplementedError("rlhf needs a reward model and a reference: the engine builds its loss with make_loss()")


EVAL_OPTIONS = ()
EVAL_FORMATS = ("preference", "rating", "instruction", "messages")


def evaluate(loaded, name: str, file: str, options) -> dict:
    """Greedy responses to the file's prompts: mean reward under the reward model (the run's own, or
    ``--reward-model``), the reference's mean reward, the policy's win rate over it, and the KL."""
    from ._pairs import read_eval_file

    fmt, rows = read_eval_file(name, file, options, EVAL_FORMATS)
    cfg = loaded.config
    if fmt in ("instruction", "messages"):  # the first user turn is the prompt
        prompts = [next(m["content"] for m in row["messages"] if m["role"] == "user") for row in rows]
    else:
        prompts = [row["prompt"] for row in rows]
    prompts = list(dict.fromkeys(prompts))
    room = cfg.train.max_length - cfg.stage.max_new_tokens
    examples = [{"input_ids": encode_prompt(loaded.tokenizer, p, room), "prompt": p} for p in prompts]
    frozen = None if hasattr(loaded.model, "disable_adapter") else build_policy(cfg, options.links)[0]
    loss = RLOOLoss(cfg, loaded.model, loaded.tokenizer, options.links["reward_model"], frozen)
    metrics = metered_eval(loss, loaded.model, examples, PromptCollator(loaded.tokenizer.pad_token_id),
                           options.batch_size)
    return {"task": "rlhf", "file": file, "n": len(prompts), "reward_model": str(options.links["reward_model"].run_dir),
            **{key: metrics[key] for key in ("reward", "ref_reward", "win_rate", "kl", "response_length")}}
