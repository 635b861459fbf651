"""Finding a model's parts generically: its stack of transformer blocks and its task head."""
from __future__ import annotations

from pathlib import Path

from ..core.lazy import torch

from ..core.errors import TunelabError


def find_blocks(model: torch.nn.Module, option: str) -> tuple[str, torch.nn.ModuleList]:
    """The transformer blocks: the longest ModuleList of identical modules.

    That is ``model.layers`` in llama-family decoders and ``bert.encoder.layer`` in BERT-family
    encoders, without naming either. ``option`` is the config key named in the error.
    """
    candidates = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if not candidates:
        raise TunelabError(f"{option}: cannot find the transformer blocks of {type(model).__name__} "
                           "(no list of repeated layers)")
    return max(candidates, key=lambda item: len(item[1]))


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameters of the task head: outside the backbone and not the (often tied) LM output layer.

    ``score`` in LlamaForSequenceClassification, ``classifier`` in BertForSequenceClassification;
    empty for a causal LM, whose ``lm_head`` is the output embedding.
    """
    backbone = getattr(model, "base_model", model)
    if backbone is model:
        return []
    skip = {id(p) for p in backbone.parameters()}
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output_embeddings is not None:
        skip |= {id(p) for p in output_embeddings.parameters()}
    return [name for name, param in model.named_parameters() if id(param) not in skip]


def train_only(model: torch.nn.Module, names: set[str]) -> None:
    """requires_grad on exactly the parameters named (any alias of a tied weight counts)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in names:
            param.requires_grad_(True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> tensor for every trainable parameter (a tied weight once, under its first name)."""
    return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def load_into(model: torch.nn.Module, file: Path, what: str) -> None:
    """Copy saved tensors into ``model``; every saved name must exist there."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise TunelabError(f"{what}: {file} is missing")
    state = load_file(str(file))
    missing = set(state) - {name for name, _ in model.named_parameters(remove_duplicate=False)}
    if missing:
        raise TunelabError(f"{what}: {file} holds weights this base model lacks, e.g. {sorted(missing)[0]}")
    model.load_state_dict(state, strict=False)
