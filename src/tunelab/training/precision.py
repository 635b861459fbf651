"""Which dtypes a run computes and stores weights in: `train.precision` and `train.base_dtype`.

The mixed-precision recipe for parameter-efficient methods (as peft and QLoRA-style recipes use it):
the frozen base weights are stored in bf16, so no step casts them and they take half the memory,
while the trainable parameters, their gradients and AdamW's state stay fp32. A bf16 base always
computes under bf16 autocast (a matmul of bf16 weights and fp32 trainables needs one dtype).

The decisions are pure functions of the settings and of what the hardware does (`Bf16Support`),
so either machine's answer can be checked anywhere; `bf16_support()` asks this machine.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from ..core.errors import TunelabError


@dataclass(frozen=True)
class Bf16Support:
    supported: bool  # the hardware runs bf16 natively
    fast: bool  # ... and faster than fp32 (CUDA GPUs with bf16, CPUs with AMX tiles)


@dataclass(frozen=True)
class Plan:
    autocast_bf16: bool  # the step runs under bf16 autocast
    base_dtype: str  # "bf16" or "fp32": the dtype the frozen weights are stored in

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_bf16 else "fp32"


def bf16_support() -> Bf16Support:
    """This machine's answer. A CPU with AMX is fast in bf16; one with bf16 instructions alone may be
    slower than in fp32 (an Intel Xeon with avx512_bf16: 146 vs 250 GFLOP/s per square matmul) or
    several times faster (an AMD EPYC with avx512_bf16: LoRA SFT 2.5x), so a cached probe decides
    (`core.bf16_speed`)."""
    import torch

    from ..core.bf16_speed import bf16_matmul_faster

    if torch.cuda.is_available():
        supported = fast = torch.cuda.is_bf16_supported()
    else:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        fast = supported and (torch.cpu._is_amx_tile_supported() or bf16_matmul_faster())
    return Bf16Support(bool(supported), bool(fast))


def autocast_bf16(precision: str, support: Bf16Support) -> bool:
    """train.precision alone: `auto` is bf16 only where it is faster; `bf16` forces it where supported."""
    if precision == "bf16" and not support.supported:
        raise TunelabError("train.precision=bf16 but this machine has no native bf16 support; use auto or fp32")
    return precision == "bf16" or (precision == "auto" and support.fast)


def choose(precision: str, base_dtype: str, support: Bf16Support, method: str = "lora",
           fp32_base: str | None = None) -> Plan:
    """Resolve train.precision and train.base_dtype together.

    ``fp32_base``: why ``method`` keeps its base weights fp32 whatever base_dtype says (full: it
    trains them); None for methods whose base is frozen. `auto` stores a frozen base in bf16 exactly
    when the step computes in bf16 (autocast would cast every frozen weight to bf16 each step anyway).
    """
    autocast = autocast_bf16(precision, support)
    if base_dtype == "bf16":
        if fp32_base is not None:
            raise TunelabError(f"train.base_dtype=bf16 does not apply to method {method} ({fp32_base}); "
                               "use auto or fp32")
        if precision == "fp32":
            raise TunelabError("train.base_dtype=bf16 computes under bf16 autocast, which train.precision=fp32 "
                               "rules out; set train.precision to auto or bf16, or train.base_dtype to fp32")
        if not support.supported:
            raise TunelabError("train.base_dtype=bf16 but this machine has no native bf16 support; use auto or fp32")
        return Plan(autocast_bf16=True, base_dtype="bf16")
    bf16_base = base_dtype == "auto" and autocast and fp32_base is None
    return Plan(autocast_bf16=autocast, base_dtype="bf16" if bf16_base else "fp32")


def plan(cfg) -> Plan:
    """The run's plan on this machine. A method module that keeps its base fp32 says why in
    ``FP32_BASE`` (see methods/base.py)."""
    from ..methods import METHODS

    return choose(cfg.train.precision, cfg.train.base_dtype, bf16_support(), cfg.method.name,
                  getattr(METHODS[cfg.method.name], "FP32_BASE", None))


def use_bf16(precision: str) -> bool:
    """Whether train.precision alone puts the step under bf16 autocast on this machine."""
    return autocast_bf16(precision, bf16_support())


def store_frozen(model, base_dtype: str) -> int:
    """Cast every frozen floating-point parameter to ``base_dtype`` in place (tied weights stay tied:
    the Parameter objects are kept); trainable parameters and buffers (rotary frequencies) are left
    as they are. Returns the number of weights cast."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[base_dtype]
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += param.numel()
    return cast


@contextmanager
def adapters_take_autocast_inputs(model, active: bool):
    """Within the block, peft's plain LoRA layers skip casting their input to the adapter's fp32
    weight dtype **whenever they run under autocast**: autocast casts that input straight back to
    bf16 for the matmul, so the round trip (two copies per adapter layer, forward and backward)
    changes no value and only costs time. Outside autocast (generation during RLHF, a reference or
    reward forward the stage runs itself, evaluation after training) the cast is what makes a bf16
    activation meet an fp32 adapter weight, so each layer decides at every call, in a forward
    pre-hook, from the autocast state it runs under. Only plain LoRA layers without dropout: a
    variant (DoRA) computes more than matmuls from the input, and dropout would scale it in bf16.
    Yields the number of layers it reaches."""
    import torch

    def decide(layer, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        under_autocast = isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)
        layer.cast_input_dtype_enabled = not under_autocast

    layers = [m for m in model.modules() if _plain_lora_without_dropout(m)] if active else []
    hooks = [layer.register_forward_pre_hook(decide, with_kwargs=True) for layer in layers]
    try:
        yield len(layers)
    finally:
        for hook in hooks:
            hook.remove()
        for layer in layers:
            layer.cast_input_dtype_enabled = True


def _plain_lora_without_dropout(module) -> bool:
    import torch

    if getattr(module, "cast_input_dtype_enabled", None) is not True or getattr(module, "lora_variant", None) != {}:
        return False
    dropouts = getattr(module, "lora_dropout", None)
    return dropouts is not None and all(isinstance(d, torch.nn.Identity) for d in dropouts.values())
