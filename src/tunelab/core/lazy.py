"""Deferred heavy imports, so that validating a config never pays for torch.

`tunelab.config` imports every method's and stage's module (their ``Config`` classes make up the
run schema). Those modules name ``torch`` only inside functions, through these proxies: the real
module is imported on first attribute access, i.e. when a model is actually built or trained.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType


class LazyModule:
    """Stands in for a module until one of its attributes is first used."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
np = LazyModule("numpy")


def _entered_at_call(context: str):
    """A decorator like ``@torch.<context>()`` that enters the context at call time, so decorating
    module-level functions does not import torch with their module."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with getattr(torch, context)():
                return fn(*args, **kwargs)

        return wrapper

    return decorate


inference_mode = _entered_at_call("inference_mode")
no_grad = _entered_at_call("no_grad")
