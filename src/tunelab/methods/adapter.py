"""Bottleneck adapters, implemented here (AdapterHub's `adapters` pins transformers 4.x).

An adapter is h -> h + up(act(down(h))) with a small bottleneck (Houlsby et al. 2019, Fig. 2).
``houlsby`` puts one after the attention output projection and one after the feed-forward
block, ``pfeiffer`` (Pfeiffer et al. 2020, AdapterFusion) only after the feed-forward block.
Both sit before the block's residual add / LayerNorm. ``up`` starts at zero, so the untrained
model computes exactly what the base model does. The base stays frozen; a task head trains.

Adapters hang off the projection they follow (``...o_proj.adapter``) and run in a forward hook,
so every base parameter keeps its name and the base checkpoint stays loadable as is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from ..core.lazy import torch
from ..models import count_params
from ._structure import find_blocks, head_parameter_names, load_into, train_only, trainable_state
from .base import MethodConfig

# Block-relative names of the projection that ends each sub-layer, across model families.
ATTENTION_OUTPUTS = ("self_attn.o_proj", "attention.output.dense", "attn.c_proj", "self_attention.dense",
                     "attn.out_proj", "attention.out_lin")
FEED_FORWARD_OUTPUTS = ("mlp.down_proj", "output.dense", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "ffn.lin2")
DIRECTORY = "adapter"


class Config(MethodConfig):
    name: Literal["adapter"] = "adapter"
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="`houlsby`: after attention and after FFN; `pfeiffer`: after FFN only (half the params)."
    )
    reduction_factor: int = Field(16, ge=1, description="Bottleneck size = hidden size / reduction_factor.")
    bottleneck: int | None = Field(None, ge=1, description="Explicit bottleneck size; overrides reduction_factor.")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="Activation in the bottleneck.")


def _run_adapter(module, args, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


def _targets(model, placement: str) -> list[str]:
    """Full names of the projections that get an adapter, block by block."""
    blocks_name, blocks = find_blocks(model, "method.placement")
    wanted = [FEED_FORWARD_OUTPUTS] if placement == "pfeiffer" else [ATTENTION_OUTPUTS, FEED_FORWARD_OUTPUTS]
    names = []
    for index, block in enumerate(blocks):
        inside = dict(block.named_modules())
        for candidates in wanted:
            found = next((c for c in candidates if isinstance(inside.get(c), torch.nn.Linear)), None)
            if found is None:
                raise TunelabError(
                    f"method.placement={placement}: cannot find the {'/'.join(candidates[:2])}-style output "
                    f"projection in {type(block).__name__}; supported: llama-family decoders, BERT-family encoders"
                )
            names.append(f"{blocks_name}.{index}.{found}")
    return names


def apply(model, cfg: Config):
    from ..models.layers import Bottleneck

    adapter_names = []
    for target_name in _targets(model, cfg.placement):
        target = model.get_submodule(target_name)
        if not hasattr(target, "adapter"):
            size = cfg.bottleneck or max(1, target.out_features // cfg.reduction_factor)
            weight = target.weight
            target.add_module("adapter", Bottleneck(target.out_features, size, cfg.non_linearity)
                              .to(device=weight.device, dtype=weight.dtype))
            target.register_forward_hook(_run_adapter)
        adapter_names += [f"{target_name}.adapter.{name}" for name, _ in target.adapter.named_parameters()]
    train_only(model, set(adapter_names) | set(head_parameter_names(model)))
    return model


def save(model, run_dir: Path) -> None:
    from safetensors.torch import save_file

    from ..models.layers import Bottleneck

    directory = run_dir / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    state = trainable_state(model)
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"method": "adapter"})
    names = sorted({name.split(".adapter.")[0] for name in state if ".adapter." in name})
    config = {
        "method": "adapter",
        "config": _config_of(model).model_dump(),
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None),
        "adapted_modules": names,
        "adapter_params": sum(p.numel() for m in model.modules() if isinstance(m, Bottleneck) for p in m.parameters()),
        "trainable_params": count_params(model)[0],  # adapters + task head
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _config_of(model) -> Config:
    """Recover the settings from the adapters themselves (save() gets no config)."""
    from ..models.layers import ACTIVATIONS, Bottleneck

    targets = [name for name, module in model.named_modules() if isinstance(module, Bottleneck)]
    if not targets:
        raise TunelabError("adapter: the model carries no adapters to save")
    first = model.get_submodule(targets[0])
    blocks = len(find_blocks(model, "method.placement")[1])
    activation = next(k for k, v in ACTIVATIONS.items() if type(first.act).__name__ == v)
    return Config(placement="houlsby" if len(targets) == 2 * blocks else "pfeiffer",
                  bottleneck=first.down.out_features, non_linearity=activation)


def load(model, run_dir: Path, cfg: Config):
    directory = run_dir / DIRECTORY
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise TunelabError(f"adapter: {config_file} is missing")
    saved = Config.model_validate(json.loads(config_file.read_text())["config"])
    model = apply(model, saved)
    load_into(model, directory / "adapter_model.safetensors", "adapter")
    return model
