"""Full fine-tuning: every weight trains."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from .base import MethodConfig


FP32_BASE = "it trains the base weights, and trainable weights stay fp32"


class Config(MethodConfig):
    name: Literal["full"] = "full"


def apply(model, cfg: Config):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save(model, run_dir: Path) -> None:
    model.save_pretrained(run_dir / "model", safe_serialization=True)


def load(model, run_dir: Path, cfg: Config):
    # Copy the weights into the model the stage built rather than from_pretrained: a stage may
    # have changed its structure (classify: an MLP head, a weight-free pooler) beyond config.json.
    from safetensors.torch import load_file

    from ..core.errors import TunelabError

    files = sorted((run_dir / "model").glob("*.safetensors"))
    if not files:
        raise TunelabError(f"run {run_dir} has no model/*.safetensors to load")
    state = {key: value for file in files for key, value in load_file(str(file)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {param.data_ptr() for name, param in model.state_dict().items() if name in state}
    untied = [name for name in missing if model.state_dict()[name].data_ptr() not in loaded]  # tied weights are fine
    if unexpected or untied:
        raise TunelabError(f"run {run_dir}: saved weights do not match the model "
                           f"(e.g. {(unexpected or untied)[0]!r})")
    return model


def merge(model):
    return model  # already a plain transformers model
