"""The model a whole evaluation runs: a trained adapter folded into the weights once, on a copy.

An unmerged LoRA/IA³ layer runs its base matmul plus the adapter's own small ones (and their
kernel launches) on every batch; folded into the base weights, a forward costs what the base
model costs. The fold happens on a deep copy, so the run's own model — still wrapped, still
trainable, still savable — is never touched: merging in place and unmerging afterwards would
leave rounding in the base weights. Methods that cannot fold (prompt/prefix tuning, bottleneck
adapters, anything that is not a peft model) are returned as they are.

The copy is put in the fastest dtype for inference here (:func:`fastest_dtype`): bf16 on CUDA
GPUs that support it, on CPUs with AMX tiles and on CPUs whose cached matmul probe finds bf16
clearly faster (``core.bf16_speed``), fp32 elsewhere — the same rule as training's ``precision: auto``.

Each tensor of the copy is made once, already merged and cast (:func:`_made_tensors` hands them to
``deepcopy`` as its memo): copying the fp32 model first and merging and casting it afterwards took
three passes over the weights and, for a moment, a second full-precision model in memory.
"""
from __future__ import annotations

import copy

from ..core.bf16_speed import bf16_matmul_faster
from ..core.lazy import torch

CACHE_KEY = "inference_model"


def fastest_dtype(device) -> "torch.dtype":
    """bf16 where it is the faster matmul dtype (CUDA with bf16, CPUs with AMX, CPUs whose cached
    probe says so: `core.bf16_speed`), else fp32."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if torch.cpu._is_amx_tile_supported():
        return torch.bfloat16
    supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if supported and bf16_matmul_faster() else torch.float32


def is_prompt_learning(model) -> bool:
    """A peft prompt/prefix-tuning model: virtual tokens the base model's forward never sees."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _mergeable(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel) and not is_prompt_learning(model) and hasattr(model, "merge_and_unload")


def _plain_lora_layers(model) -> list | None:
    """Every adapter layer of a peft LoRA model when each is a vanilla LoRA ``Linear``, else None.

    Vanilla: no variant (DoRA and the like merge differently), no LoRA bias, nothing merged yet;
    anything else takes peft's own merge.
    """
    from peft import PeftModel
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(model, PeftModel) or is_prompt_learning(model):
        return None
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        if type(layer) is not LoraLinear or layer.merged or getattr(layer, "lora_variant", None) \
                or any(layer.lora_bias.get(a, False) for a in layer.active_adapters):
            return None
    return layers


def _made_tensors(model, dtype, lora_layers: list) -> dict:
    """``deepcopy`` memo: every floating parameter and buffer of ``model`` copied once, in ``dtype``
    (None: each in its own dtype).

    A LoRA layer's base weight is merged the way peft merges it (``weight += delta`` in the weight's
    own dtype, active adapters in order) and then cast, so the values equal peft's merge followed by
    a cast. Its adapter weights map to themselves: the copy's ``unload`` drops them uncopied.
    """
    memo: dict = {}
    with torch.no_grad():
        for layer in lora_layers:
            base = layer.get_base_layer()
            merged = base.weight.detach().clone()
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    merged += layer.get_delta_weight(name)
            memo[id(base.weight)] = torch.nn.Parameter(merged.to(dtype or merged.dtype),
                                                       requires_grad=base.weight.requires_grad)
            for param in [*layer.lora_A.parameters(), *layer.lora_B.parameters()]:
                memo[id(param)] = param
        for param in model.parameters():
            if id(param) not in memo and param.is_floating_point():
                made = param.detach().to(dtype or param.dtype, copy=True)
                memo[id(param)] = torch.nn.Parameter(made, requires_grad=param.requires_grad)
        for buffer in model.buffers():
            if id(buffer) not in memo and buffer.is_floating_point():
                memo[id(buffer)] = buffer.detach().to(dtype or buffer.dtype, copy=True)
    return memo


def _copy(model, dtype, recast: bool):
    """The merged, cast copy: tensors made once where the layers allow, else peft's merge on a full copy."""
    lora_layers = _plain_lora_layers(model)
    if lora_layers is not None or (recast and not _mergeable(model)):
        memo = _made_tensors(model, dtype if recast else None, lora_layers or [])
        out = copy.deepcopy(model, memo)
        return out.unload() if lora_layers is not None else out
    out = copy.deepcopy(model)
    if _mergeable(out):
        out = out.merge_and_unload()
    return out.to(dtype) if recast else out


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
    out = _copy(model, dtype, recast) if _mergeable(model) or recast else model
    out.eval()
    if cache is not None:
        cache[CACHE_KEY] = (model, out)
    return out
