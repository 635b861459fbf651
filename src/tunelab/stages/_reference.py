"""The frozen reference policy of DPO and RLHF, and the log-probabilities both need.

With a peft method (LoRA, IA3, prefix, ...) the reference is the policy itself with its adapter
switched off (peft's ``disable_adapter``): no second copy of the weights. With ``full`` every
weight trains, so the reference must be a frozen copy made before the first step; it runs the
policy's forward as the Trainer wrapped it (bf16 autocast under mixed precision), so before the
first update policy and reference give the same log-probabilities bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from types import MethodType

from ..core.errors import TunelabError
from ..core.lazy import F, torch
from ..data.tokenize import IGNORE


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


class Reference:
    """Computes outputs of the policy as it was before training."""

    def __init__(self, policy, frozen=None):
        """``frozen``: the starting policy as its own model (evaluating a finished full run)."""
        policy = _unwrap(policy)
        disable_dropout(policy)
        self.shares_weights = frozen is None and hasattr(policy, "disable_adapter")  # a peft model
        if self.shares_weights:
            self.model = policy
        else:
            self._policy = policy  # only to follow how its forward is wrapped (_same_forward)
            self.model = (frozen if frozen is not None else copy.deepcopy(policy)).eval()
            for param in self.model.parameters():
                param.requires_grad_(False)

    @contextlib.contextmanager
    def active(self):
        """Inside: ``self.model`` behaves as the reference (adapter off, no gradients)."""
        with torch.no_grad():
            if self.shares_weights:
                was_training = self.model.training
                self.model.eval()  # adapter dropout off
                try:
                    with self.model.disable_adapter():
                        yield self.model
                finally:
                    self.model.train(was_training)
            else:
                _same_forward(self._policy, self.model)
                yield self.model


def disable_dropout(model) -> None:
    """Dropout off in the policy (TRL's ``disable_dropout`` does the same for DPO/RLOO).

    Both losses compare the policy with its reference, which runs without dropout; with dropout
    on in the policy alone (e.g. ``method.dropout=0.1`` for LoRA) the two would differ before any
    update, and the loss would not start at its neutral value (log 2 for DPO, zero KL for RLOO).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _same_forward(policy, reference) -> None:
    """Give the frozen copy the forward the policy runs now, bound to the copy's weights.

    The copy is made before the Trainer prepares the policy, and preparing replaces the policy's
    ``forward`` on the instance: under mixed precision accelerate wraps it in bf16/fp16 autocast
    (and fp32 outputs). A copy left with the plain forward ran in fp32 while the policy ran in
    bf16, so at step 0 their log-probabilities differed (up to 1.4e-3 per sequence on tiny-llama;
    a first DPO loss of 0.693229 instead of log 2).
    """
    forward = vars(policy).get("forward")
    if forward is None:  # not (or no longer) wrapped
        vars(reference).pop("forward", None)
    elif isinstance(forward, MethodType) and forward.__self__ is policy:
        reference.forward = MethodType(forward.__func__, reference)
    else:
        warnings.warn("the policy's forward is wrapped in a way the frozen reference cannot share; the reference "
                      "runs the model's plain forward and may differ slightly from the policy before training",
                      stacklevel=3)


def _accepts_logits_to_keep(model) -> bool:
    model = _unwrap(model)
    if hasattr(model, "get_base_model"):  # peft passes extra keywords through to the base model
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of log p(token) over labelled positions of each row: (B, T) -> (B,).

    Responses are a fraction of each row, so where the model supports it (``logits_to_keep`` as
    a boolean mask) the vocabulary projection and softmax run only on the positions that
    predict a labelled token — the rest of the (B, T, vocab) logits are never built.
    """
    extra = {"position_ids": position_ids} if position_ids is not None else {}
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    if _accepts_logits_to_keep(model):
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=keep, **extra).logits  # (N kept, V)
        logp = -F.cross_entropy(logits.float(), targets[keep[:, :-1]], reduction="none")  # (N,)
        rows = keep.nonzero()[:, 0]  # row of each kept position, in the same (row-major) order
        return torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits[:, :-1]  # (B, T-1, V)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view(targets.shape)
    return -nll.sum(dim=1)


def build_policy(cfg, links=None):
    """(model, tokenizer): the base causal LM, or the linked ``stage.policy`` run with its method merged in."""
    from ..methods import METHODS
    from ..models import CAUSAL_LM, load_model

    policy = (links or {}).get("policy")
    if policy is None:
        return load_model(cfg.model, CAUSAL_LM)
    merge = getattr(METHODS[policy.config.method.name], "merge", None)
    if merge is None:
        raise TunelabError(f"stage.policy: run {policy.run_dir} used method '{policy.config.method.name}', "
                           "which cannot be merged into plain weights; train the policy with lora or full")
    model = merge(policy.model)
    model.train()
    return model, policy.tokenizer
