"""Small trainable layers that adaptation methods insert into a model."""
from __future__ import annotations

import torch
from torch import nn

# Activation name in a method's config -> torch.nn class name.
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}


class Bottleneck(nn.Module):
    """h + up(act(down(h))); ``up`` is zero-initialised so the adapter starts as the identity."""

    def __init__(self, dim: int, size: int, non_linearity: str):
        super().__init__()
        self.down = nn.Linear(dim, size)  # default (Kaiming-uniform) init, as in He et al. 2022's parallel adapter
        self.act = getattr(nn, ACTIVATIONS[non_linearity])()
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        return hidden + self.up(self.act(self.down(hidden)))
