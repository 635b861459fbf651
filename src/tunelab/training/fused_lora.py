"""One autograd node per LoRA layer in training: the frozen matmul and the low-rank update together.

peft's `lora.Linear` computes ``base(x) + lora_B(lora_A(x)) * scaling`` as separate modules, and
under bf16 autocast that is, per adapted layer and micro-batch: a cast of each adapter weight to
bf16 (and of its gradient back), the base matmul, two rank-r matmuls, a scale and an add over the
whole (tokens x out) output, and in backward the same again plus a sum of the two input gradients.
On a CPU those elementwise passes and autograd nodes cost about as much as the small matmuls
themselves (docs/performance.md, the profile). `lora_linear_function()` does the same arithmetic with
the scale folded into B and the update added in place by ``addmm_``:

    forward   y  = x Wᵀ (+ b);  xa = x Aᵀ;  y += xa (sB)ᵀ
    backward  g_B = s gᵀ xa;  g_xa = g (sB);  g_A = g_xaᵀ x;  g_x = g W + g_xa A

in the compute dtype (bf16 under autocast, else the input's dtype), with the adapter's gradients
returned in its own dtype (fp32), as the optimizer expects. It is a training-time path only:
`fused_lora_layers` switches plain LoRA layers (one active adapter, no dropout, no DoRA or other
variant, an `nn.Linear` base, not merged) to it for the duration of a block and restores peft's
forward after; everything else keeps peft's own forward. Saved adapters are untouched peft state.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

from ..core.lazy import torch


def _compute_dtype(x):
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@functools.cache
def lora_linear_function():
    """The autograd Function (built on first use, so importing this module does not import torch).

    Every operand is cast to the compute dtype explicitly (a no-op for a bf16 base and activations),
    so the matmuls need no autocast context of their own; the scale rides in ``addmm_``'s alpha and
    on the (tokens x r) intermediate of backward, not on a scaled copy of B per call."""

    class LoraLinearFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
            dtype = _compute_dtype(x)
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            out = torch.mm(flat, w.t()) if bias is None else torch.addmm(bias.to(dtype), flat, w.t())
            xa = torch.mm(flat, a.t())
            out.addmm_(xa, b.t(), alpha=scaling)
            ctx.save_for_backward(flat, w, a, b, xa)
            ctx.scaling = scaling
            ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
            # the dtypes each gradient is returned in (a bias may train, with peft's `bias` option)
            ctx.grad_dtypes = (weight.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            flat, w, a, b, xa = ctx.saved_tensors
            weight_dtype, bias_dtype, a_dtype, b_dtype = ctx.grad_dtypes
            needs_x, needs_w, needs_bias, needs_a, needs_b, _ = ctx.needs_input_grad
            grad_x = grad_w = grad_bias = grad_a = grad_b = None
            g = grad_out.reshape(-1, grad_out.shape[-1]).to(w.dtype)
            g_xa = torch.mm(g, b).mul_(ctx.scaling)  # (tokens, r)
            if needs_b:
                grad_b = torch.mm(g.t(), xa).mul_(ctx.scaling).to(b_dtype)
            if needs_a:
                grad_a = torch.mm(g_xa.t(), flat).to(a_dtype)
            if needs_x:
                grad_x = torch.mm(g, w).addmm_(g_xa, a).to(ctx.x_dtype).view(ctx.x_shape)
            if needs_w:
                grad_w = torch.mm(g.t(), flat).to(weight_dtype)
            if needs_bias:
                grad_bias = g.sum(0).to(bias_dtype)
            return grad_x, grad_w, grad_bias, grad_a, grad_b, None

    return LoraLinearFunction


def fusable(layer) -> bool:
    """A peft LoRA Linear whose forward is exactly base(x) + B(A(x))·s: what the fused node computes."""
    if type(layer).__name__ != "Linear" or not hasattr(layer, "lora_A") or not hasattr(layer, "base_layer"):
        return False
    if not isinstance(layer.base_layer, torch.nn.Linear) or getattr(layer, "fan_in_fan_out", False):
        return False
    if getattr(layer, "lora_variant", None) or getattr(layer, "merged_adapters", None):
        return False
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return False
    name = active[0]
    if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
        return False
    return isinstance(layer.lora_dropout[name], torch.nn.Identity)


def _fused_forward(layer):
    peft_forward = layer.forward
    (name,) = [n for n in layer.active_adapters if n in layer.lora_A]  # fusable(): exactly one
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    function = lora_linear_function()

    def forward(x, *args, **kwargs):
        # what peft's forward checks per call, read from the layer's own state (a reference model's
        # forward under `disable_adapter()`, a merge, evaluation without gradients take peft's path)
        if args or kwargs or layer.disable_adapters or layer.merged_adapters or not torch.is_grad_enabled() \
                or layer.active_adapters != [name]:
            return peft_forward(x, *args, **kwargs)
        return function.apply(x, base.weight, base.bias, lora_a.weight, lora_b.weight, float(layer.scaling[name]))

    return forward


@contextmanager
def fused_lora_layers(model, active: bool = True):
    """Within the block, every fusable LoRA layer of ``model`` trains through `lora_linear_function()`
    (only while gradients are on: evaluation and generation inside the block keep peft's forward).
    Yields the number of layers switched."""
    layers = [m for m in model.modules() if fusable(m)] if active else []
    for layer in layers:
        layer.forward = _fused_forward(layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute: the class's (peft's) forward again
