"""Dropout whose mask is drawn ~5x faster on a CPU, for the duration of training.

PyTorch's CPU dropout draws one Bernoulli sample per element from its Mersenne Twister
(`aten::bernoulli_`), about 8 ns per element on a 2-core Xeon: training a LoRA classifier on
minilm-l6 (BERT: dropout 0.1 on the embeddings, every sub-layer's output and the attention
probabilities, a (batch, heads, L, L) tensor per layer) spent **37% of its time in `bernoulli_`**
(docs/performance.md). Here the mask comes from numpy's PCG64 instead: 64 random bits per draw,
split into four 16-bit numbers; an element is dropped when its number is below round(p * 65536),
so the rate is p to within 2^-17, and the survivors are scaled by 1 / (1 - that rate) as
`F.dropout` scales by 1 / (1 - p). A (16, 12, 128, 128) mask: 8.7 ms against 46 ms for `F.dropout`.

Each call seeds its generator from torch's default CPU generator, so `torch.manual_seed` (which
the Trainer sets, and restores when resuming) still makes a run repeatable. Only CPU tensors, only
while training with gradients on: anything else (CUDA, evaluation, generation) is `F.dropout`.

`fast_dropout(model)` switches, for the block: every `nn.Dropout` module with p > 0 (the backbone's,
an adapter's, peft's LoRA dropout), and attention-probability dropout, which transformers hands to
SDPA as ``dropout_p`` (PyTorch's CPU kernel then draws it with `bernoulli_` too): the model's
attention implementation is wrapped so that, while training with dropout > 0, attention runs as
transformers' eager attention does (scores, mask, softmax, dropout, values) with this mask;
otherwise the wrapped implementation runs unchanged.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager

from ..core.lazy import torch

_PREFIX = "tunelab_fast_dropout+"
# attention implementations that take dropout as an argument (the second is models.packed_attention.NAME,
# spelt out because that module imports torch)
WRAPPABLE = ("sdpa", "tunelab_packed_sdpa")


def keep_mask(shape, p: float) -> tuple["torch.Tensor", float]:
    """(uint8 mask of ``shape``, 1 where an element is kept; the scale for kept elements)."""
    import numpy as np

    threshold = round(p * 65536)
    count = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's generator: torch.manual_seed governs it
    words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((count + 3) // 4)
    keep = np.greater_equal(words.view(np.uint16)[:count], threshold)  # numpy's compare: ~5x torch's on int16
    # uint8 -> float is a vectorised conversion; bool -> float was 8x slower in PyTorch 2.13 (measured)
    return torch.from_numpy(keep.view(np.uint8)).view(shape), 65536 / (65536 - threshold)


@functools.cache
def dropout_function():
    """The autograd Function (built on first use, so importing this module does not import torch)."""

    class FastDropout(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p: float):
            keep, scale = keep_mask(x.shape, p)
            ctx.save_for_backward(keep)  # one byte per element, as F.dropout's bool mask
            ctx.scale = scale
            return x * keep.to(x.dtype).mul_(scale)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            return grad * keep.to(grad.dtype).mul_(ctx.scale), None

    return FastDropout


def dropout(x, p: float, training: bool = True):
    """`F.dropout(x, p, training)`, with the fast mask where it applies (CPU, training, gradients on)."""
    if not training or not 0 < p < 1 or x.device.type != "cpu" or not torch.is_grad_enabled():
        return torch.nn.functional.dropout(x, p, training)
    return dropout_function().apply(x, p)


def attention_with_dropout(query, key, value, mask, p: float, scaling, is_causal: bool):
    """Eager attention (as transformers' ``eager_attention_forward``) with the fast dropout on the
    probabilities. ``mask``: SDPA's (bool, True = attend; or additive float) or None."""
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat key/value heads
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    elif is_causal:
        q_len, k_len = scores.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # in the scores' dtype, as transformers' eager attention
    return torch.matmul(dropout(probs, p), value)


def _wrap(name: str):
    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        use = (dropout > 0 and module.training and torch.is_grad_enabled() and query.device.type == "cpu"
               and kwargs.get("position_bias") is None and kwargs.get("softcap") is None)
        if not use:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            original = ALL_ATTENTION_FUNCTIONS[name]  # looked up per call: whatever is registered under it now
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            is_causal=is_causal, **kwargs)
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = query.shape[2] > 1 and attention_mask is None and causal
        out = attention_with_dropout(query, key, value, attention_mask, dropout, scaling, causal)
        return out.transpose(1, 2).contiguous(), None

    return forward


def _wrapped_name(name: str) -> str:
    """Register (once) the wrapper of attention implementation ``name`` and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    wrapped = _PREFIX + name
    if wrapped not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(wrapped, _wrap(name))
        AttentionMaskInterface.register(wrapped, ALL_MASK_ATTENTION_FUNCTIONS[name])  # the same masks as before
    return wrapped


def _attention_dropout(config) -> float:
    """The attention-probability dropout a transformers config declares (BERT, llama, GPT-2 spellings)."""
    rates = [getattr(config, name, 0.0) for name in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")]
    return max((r for r in rates if isinstance(r, (int, float))), default=0.0)


def _configs(model) -> list:
    seen, configs = set(), []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen.add(id(config))
            configs.append(config)
    return configs


@contextmanager
def fast_dropout(model, active: bool = True):
    """Within the block, ``model``'s dropout modules and SDPA attention dropout use the fast mask
    (see the module docstring). Yields the number of dropout modules switched."""
    if not active:
        yield 0
        return
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    for module in modules:
        module.forward = _module_forward(module)
    switched = []
    for config in _configs(model):
        name = config._attn_implementation
        if name in WRAPPABLE and _attention_dropout(config) > 0:  # else nothing to draw: keep the stock name
            config._attn_implementation = _wrapped_name(name)
            switched.append((config, name))
    try:
        yield len(modules)
    finally:
        for module in modules:
            del module.forward  # the instance attribute: nn.Dropout's own forward again
        for config, name in switched:
            config._attn_implementation = name


def _module_forward(module):
    def forward(x):
        return dropout(x, module.p, module.training) if not module.inplace else torch.nn.functional.dropout(
            x, module.p, module.training, inplace=True)

    return forward
