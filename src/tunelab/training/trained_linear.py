"""Trained fp32 linear layers under bf16 autocast: the weight cast once per optimizer step, its gradient
added into ``.grad`` in place.

In full fine-tuning the weights train in fp32 while the step computes under bf16 autocast, and
autocast pays for that per layer and micro-batch, besides the matmuls: a cast of the weight to bf16
in forward; in backward a cast of the bf16 weight gradient to a fresh fp32 tensor; and, from the
second accumulated micro-batch on, an fp32 add of that tensor into ``.grad``. On smollm2-135m with
two accumulated micro-batches that is ~36 bytes of memory traffic per weight per optimizer step and
a fresh fp32 gradient-sized block per layer and micro-batch (profiled on a 2-core AMX Xeon: the
casts and adds took ~8% of a full-SFT step; docs/performance.md).

`trained_linear_layers` switches every ``nn.Linear`` whose weight trains in fp32 to one autograd
function, for a block, that computes what autocast computes with less of that:

    forward   y = bf16(x) W16ᵀ (+ b)    W16: the weight's bf16 copy, cast once per optimizer step
    backward  g_x = g W16 (in x's dtype);  weight.grad += gᵀ bf16(x)  (fp32 += bf16, in place)

The weight's gradient is the same bf16 matmul autocast runs; it is added into the fp32 ``.grad``
directly (the first micro-batch of a step casts it once) and not handed back to autograd, so the
sum over micro-batches is the one autocast's path computes (fp32 additions of the same bf16 terms).
The bf16 copy is dropped at every optimizer step (fused AdamW updates weights without moving their
version counter) and whenever the weight's version or storage changes (a loaded checkpoint).

Layers switch only while bf16 autocast is on and gradients are enabled at call time; otherwise
(evaluation, fp32 runs) the stock forward runs. Single-process runs only: DistributedDataParallel
reduces gradients as autograd accumulates them, and a gradient written straight into ``.grad``
would miss that reduction.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class _Bf16Copies:
    """Each switched weight's bf16 copy, valid until the next optimizer step or in-place change."""

    def __init__(self):
        self.copies: dict[int, tuple[tuple, torch.Tensor]] = {}

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight._version, weight.data_ptr())
        cached = self.copies.get(id(weight))
        if cached is None or cached[0] != key:
            cached = (key, weight.detach().to(torch.bfloat16))
            self.copies[id(weight)] = cached
        return cached[1]

    def clear(self, *_args, **_kwargs) -> None:
        self.copies.clear()


@functools.cache
def trained_linear_function():
    """The autograd Function (built on first use)."""

    class TrainedLinearFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, weight16):
            with torch.autocast(x.device.type, enabled=False):
                flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
                out = flat @ weight16.t() if bias is None else torch.addmm(bias.to(torch.bfloat16), flat, weight16.t())
            ctx.save_for_backward(flat, weight16)
            ctx.weight = weight
            ctx.x_shape, ctx.x_dtype, ctx.bias_dtype = x.shape, x.dtype, None if bias is None else bias.dtype
            return out.reshape(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            flat, weight16 = ctx.saved_tensors
            needs_x, _, needs_bias, _ = ctx.needs_input_grad
            grad_x = grad_bias = None
            with torch.autocast(grad_out.device.type, enabled=False):
                g = grad_out.reshape(-1, grad_out.shape[-1]).to(torch.bfloat16)
                if needs_x:
                    grad_x = (g @ weight16).to(ctx.x_dtype).reshape(ctx.x_shape)
                if needs_bias:
                    grad_bias = g.sum(0).to(ctx.bias_dtype)
                grad_w = g.t() @ flat  # (out, in) in bf16, as autocast's matmul gives it
                weight = ctx.weight
                if weight.grad is None:
                    weight.grad = grad_w.to(weight.dtype)
                else:
                    weight.grad.add_(grad_w)
            return grad_x, None, grad_bias, None

    return TrainedLinearFunction


def switchable(module) -> bool:
    """A plain ``nn.Linear`` (not a subclass: peft's and quantised layers compute more) whose weight
    trains in fp32."""
    if type(module) is not torch.nn.Linear:
        return False
    weight = module.weight
    return weight.requires_grad and weight.dtype == torch.float32


def _switched_forward(layer, copies: _Bf16Copies):
    def forward(x):
        under_bf16_autocast = (torch.is_autocast_enabled(x.device.type)
                       and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)
        if not (under_bf16_autocast and torch.is_grad_enabled()) or layer.weight.device != x.device:
            return torch.nn.Linear.forward(layer, x)
        return trained_linear_function().apply(x, layer.weight, layer.bias, copies.get(layer.weight))

    return forward


@contextmanager
def trained_linear_layers(model, active: bool = True):
    """Within the block, every switchable linear layer of ``model`` (see `switchable`) computes through
    `trained_linear_function()` while bf16 autocast and gradients are on. Yields the number of layers
    switched."""
    layers = [m for m in model.modules() if switchable(m)] if active else []
    if not layers:
        yield 0
        return
    copies = _Bf16Copies()
    hook = register_optimizer_step_post_hook(copies.clear)
    for layer in layers:
        layer.forward = _switched_forward(layer, copies)
    try:
        yield len(layers)
    finally:
        hook.remove()
        copies.clear()
        for layer in layers:
            del layer.forward  # the class's forward again
