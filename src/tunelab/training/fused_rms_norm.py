"""Llama-style RMSNorm layers as one autograd node while training.

transformers' ``LlamaRMSNorm`` (and the identical Mistral/Qwen2/Qwen3/Phi-3 ones) computes in fp32
through six differentiable ops, and autograd keeps their fp32 intermediates for backward: the
upcast input, the normalised activations, the reciprocal std broadcast per element. Here one node
computes the same thing and keeps only the input in its own dtype and one fp32 reciprocal std per
row; backward rebuilds the normalised activations from them (closed form:
dx = r (g - x̂ mean(g x̂)), with g the gradient reaching x̂ and r the reciprocal std).

Measured on the 2-core AMX Xeon (fwd+bwd of one 500 x 576 bf16 norm, as in smollm2-135m): 1.25-1.51
ms against 1.84-2.14 ms for transformers' module; 61 norms per micro-batch. A layer is switched
only when its ``forward`` is exactly ``LlamaRMSNorm.forward`` (same bytecode), so variants that
differ (Gemma's ``1 + weight``) keep their own forward.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, eps: float):
        hidden32 = hidden.float()
        # squared in place when the upcast made a copy (fp32 input: hidden32 is the input itself)
        squares = hidden32.square() if hidden32 is hidden else hidden32.square_()
        rstd = torch.rsqrt(squares.mean(-1, keepdim=True).add_(eps))
        del hidden32, squares
        # computed in fp32 (rstd's dtype) and rounded once into the input's dtype: the stock
        # (hidden32 * rstd).to(dtype) without its fp32 product
        normed = torch.mul(hidden, rstd, out=torch.empty_like(hidden))
        ctx.save_for_backward(hidden, weight, rstd)
        return weight * normed

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, rstd = ctx.saved_tensors
        normed32 = hidden * rstd  # fp32 by promotion: one pass, no separate upcast
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed32.to(hidden.dtype)).sum_to_size(weight.shape).to(weight.dtype)
        grad_hidden = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).to(hidden.dtype).float()  # through `.to(input_dtype)`, as autograd would
            mean = (grad_normed * normed32).mean(-1, keepdim=True)
            grad_hidden = grad_normed.sub_(normed32.mul_(mean)).mul_(rstd).to(hidden.dtype)
        return grad_hidden, grad_weight, None


def rms_norm(hidden, weight, eps: float):
    """``weight * normalise(hidden)`` exactly as ``LlamaRMSNorm.forward`` computes it, one autograd node."""
    return _RMSNorm.apply(hidden, weight, eps)


@functools.cache
def _llama_forward_code():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    code = LlamaRMSNorm.forward.__code__
    return code.co_code, code.co_consts, code.co_names


def fusable(module) -> bool:
    forward = getattr(type(module), "forward", None)
    code = getattr(forward, "__code__", None)
    return (code is not None and isinstance(getattr(module, "weight", None), torch.Tensor)
            and isinstance(getattr(module, "variance_epsilon", None), float)
            and (code.co_code, code.co_consts, code.co_names) == _llama_forward_code())


@contextmanager
def fused_rms_norms(model, active: bool = True):
    """Run every Llama-style RMSNorm of ``model`` through :func:`rms_norm` inside the block."""
    layers = [m for m in model.modules() if fusable(m)] if active else []
    for layer in layers:
        layer.forward = lambda hidden, layer=layer: rms_norm(hidden, layer.weight, layer.variance_epsilon)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
