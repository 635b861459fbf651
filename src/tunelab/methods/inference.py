"""The model a whole evaluation runs: a trained adapter folded into the weights once, on a copy.

An unmerged LoRA/IA³ layer runs its base matmul plus the adapter's own small ones (and their
kernel launches) on every batch; folded into the base weights, a forward costs what the base
model costs. The fold happens on a deep copy, so the run's own model — still wrapped, still
trainable, still savable — is never touched: merging in place and unmerging afterwards would
leave rounding in the base weights. Methods that cannot fold (prompt/prefix tuning, bottleneck
adapters, anything that is not a peft model) are returned as they are.

The copy is put in the fastest dtype for inference here (:func:`fastest_dtype`): bf16 on CUDA
GPUs that support it and on CPUs with AMX tiles, fp32 elsewhere — the same rule as training's
``precision: auto`` (bf16 without AMX is slower than fp32 on CPUs; see docs/performance.md).
"""
from __future__ import annotations

import copy

from ..core.lazy import torch

CACHE_KEY = "inference_model"


def fastest_dtype(device) -> "torch.dtype":
    """bf16 where it is the faster matmul dtype (CUDA with bf16, CPUs with AMX), else fp32."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if torch.cpu._is_amx_tile_supported() else torch.float32


def is_prompt_learning(model) -> bool:
    """A peft prompt/prefix-tuning model: virtual tokens the base model's forward never sees."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _mergeable(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel) and not is_prompt_learning(model) and hasattr(model, "merge_and_unload")


def inference_model(model, cache: dict | None = None):
    """A model computing what ``model`` computes, for a whole evaluation: adapters merged, in eval mode.

    ``model`` itself when nothing can be merged and its dtype is already the fastest; otherwise a
    merged (and cast) deep copy. ``cache`` (a ``Loaded.cache``) keeps that copy for later calls on a
    frozen model (RLHF scores with the same reward model every step).
    """
    if cache is not None and cache.get(CACHE_KEY, (None, None))[0] is model:
        return cache[CACHE_KEY][1]
    param = next(model.parameters(), None)
    dtype = fastest_dtype(param.device) if param is not None else None
    recast = param is not None and param.dtype.is_floating_point and param.dtype != dtype
    out = model
    if _mergeable(model) or recast:
        out = copy.deepcopy(model)
        if _mergeable(out):
            out = out.merge_and_unload()
        if recast:
            out = out.to(dtype)
    out.eval()
    if cache is not None:
        cache[CACHE_KEY] = (model, out)
    return out
