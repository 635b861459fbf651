"""The contract every adaptation method honours.

A method module exposes:
  - ``Config``: a :class:`MethodConfig` subclass whose ``name`` is a ``Literal``;
  - ``apply(model, cfg) -> model``: make the model trainable the method's way;
  - ``save(model, run_dir)``: write the trained weights into the run directory;
  - ``load(model, run_dir, cfg) -> model``: rebuild the trained model on a fresh base;
  - optionally ``merge(model) -> model``: fold the method into plain base weights;
  - optionally ``PACKING_UNSUPPORTED = "why"``: the engine then trains on unpacked rows;
  - optionally ``ONNX_UNSUPPORTED = "why"``: `tunelab export --format onnx` refuses its runs;
  - optionally ``check_stage(stage_module)``: raise if the method cannot serve that stage (before loading);
  - optionally ``FP32_BASE = "why"``: the base weights stay fp32 whatever ``train.base_dtype`` says
    (the others store their frozen weights in bf16 when it says so; trainable ones stay fp32).
The training engine never asks which method it holds.
"""
from __future__ import annotations

from ..core.schema import StrictModel


class MethodConfig(StrictModel):
    name: str
