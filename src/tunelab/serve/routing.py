"""Per-row routing of hook-based adapters, so rows for different runs on one base share a forward.

peft routes LoRA per row itself (``adapter_names=[...]`` in forward; ``__base__`` for the bare
base). It has no such path for (IA)³ (``IA3Layer.forward`` multiplies every row by the product of
the *active* adapters' vectors, and one PeftModel cannot hold LoRA and IA3 adapters together), and
tunelab's bottleneck adapters (``methods/adapter.py``) are hooks of their own. Both are cheap
elementwise or bottleneck transforms of one Linear's input or output, so they are applied here in
forward hooks on the *base* Linear modules, to the rows whose route names them:

  - bottleneck adapter: ``out[rows] = adapter(out[rows])`` after the projection it follows;
  - (IA)³, non-feed-forward target: ``out[rows] *= l``; feed-forward target: ``x[rows] *= l`` before.

The hooks sit on the original ``nn.Linear`` objects, which peft keeps as ``base_layer`` when it
wraps them in LoRA layers, so LoRA rows (route not named here) pass through untouched and hook
rows see a LoRA delta of zero (their ``adapter_names`` entry is ``__base__``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.errors import TunelabError
from ..core.lazy import torch


class Routing:
    """The hook adapters attached to one base model and, during a forward, which rows take which route."""

    def __init__(self, modules: dict):
        self._modules = modules  # name -> module of the base, taken before peft wraps anything
        self._after: dict[str, dict[str, object]] = {}  # linear name -> {route: transform of the output}
        self._before: dict[str, dict[str, object]] = {}  # linear name -> {route: transform of the input}
        self._hooked: set[str] = set()
        self._rows: dict[str, "torch.Tensor"] | None = None  # route -> row indices, set for one forward
        self._whole: str | None = None  # every row takes this route (no indexing needed)
        self.routes: set[str] = set()

    # ------------------------------------------------------------------ forward-time routing

    def set_rows(self, routes: list[str | None]) -> None:
        """Which route each row of the coming forward takes (None: not a hook route)."""
        named = {r for r in routes if r in self.routes}
        if not named:
            self._rows, self._whole = None, None
        elif len(set(routes)) == 1:
            self._rows, self._whole = None, routes[0]
        else:
            self._rows = {r: torch.tensor([i for i, x in enumerate(routes) if x == r]) for r in named}
            self._whole = None

    def _apply(self, table: dict, tensor):
        if self._whole is not None:
            transform = table.get(self._whole)
            return tensor if transform is None else transform(tensor)
        if self._rows is None:
            return tensor
        for route, rows in self._rows.items():
            transform = table.get(route)
            if transform is not None:
                tensor[rows] = transform(tensor[rows])  # (b, T, H): only this route's rows
        return tensor

    def _hook(self, name: str) -> None:
        if name in self._hooked:
            return
        module = self._modules[name]
        before, after = self._before.setdefault(name, {}), self._after.setdefault(name, {})
        module.register_forward_pre_hook(lambda m, args: (self._apply(before, args[0].clone()), *args[1:])
                                         if before and (self._whole or self._rows) else None)
        module.register_forward_hook(lambda m, args, out: self._apply(after, out) if after else None)
        self._hooked.add(name)

    def _linear(self, name: str, run_dir: Path):
        module = self._modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise TunelabError(f"run {run_dir}: its adapter targets {name}, which is not a linear layer of the base model")
        return module

    # ------------------------------------------------------------------ attaching runs

    def attach_bottleneck(self, route: str, run_dir: Path) -> None:
        """A tunelab ``adapter`` run: its bottleneck modules after the projections it adapted."""
        from safetensors.torch import load_file

        from ..methods.adapter import DIRECTORY, Config
        from ..models.layers import Bottleneck

        directory = run_dir / DIRECTORY
        saved = json.loads((directory / "adapter_config.json").read_text())
        cfg = Config.model_validate(saved["config"])
        state = load_file(str(directory / "adapter_model.safetensors"))
        transforms = {}
        for name in saved["adapted_modules"]:
            target = self._linear(name, run_dir)
            size = cfg.bottleneck or max(1, target.out_features // cfg.reduction_factor)
            block = Bottleneck(target.out_features, size, cfg.non_linearity)
            prefix = f"{name}.adapter."
            block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            transforms[name] = block.to(device=target.weight.device, dtype=target.weight.dtype).eval()
        self._register(route, transforms, {})

    def attach_ia3(self, route: str, run_dir: Path) -> None:
        """A peft (IA)³ run: its scaling vectors on the outputs (or, feed-forward, inputs) of its targets."""
        from safetensors.torch import load_file

        directory = run_dir / "adapter"
        config = json.loads((directory / "adapter_config.json").read_text())
        feedforward = config.get("feedforward_modules") or []
        state = load_file(str(directory / "adapter_model.safetensors"))
        after, before = {}, {}
        for key, vector in state.items():
            if not key.endswith(".ia3_l"):
                continue
            name = key[: -len(".ia3_l")].removeprefix("base_model.model.")
            target = self._linear(name, run_dir)
            scale = vector.flatten().to(device=target.weight.device, dtype=target.weight.dtype)
            if _matches(feedforward, name):
                before[name] = lambda x, s=scale: x * s  # (..., in_features)
            else:
                after[name] = lambda y, s=scale: y * s  # (..., out_features)
        if not after and not before:
            raise TunelabError(f"run {run_dir}: {directory}/adapter_model.safetensors holds no (IA)³ vectors")
        self._register(route, after, before)

    def _register(self, route: str, after: dict, before: dict) -> None:
        for name, transform in after.items():
            self._after.setdefault(name, {})[route] = transform
        for name, transform in before.items():
            self._before.setdefault(name, {})[route] = transform
        for name in set(after) | set(before):
            self._hook(name)
        self.routes.add(route)

    def detach(self, route: str) -> None:
        for table in (*self._after.values(), *self._before.values()):
            table.pop(route, None)
        self.routes.discard(route)


def _matches(patterns, name: str) -> bool:
    """peft's target test: a regex string must match the whole name; a list entry matches a name or its suffix."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)
