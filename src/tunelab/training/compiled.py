"""`train.compile`: the model's transformer blocks run through torch.compile for the training steps.

Why blocks and not the whole model: a packed row's attention is one SDPA call per packed example
(models/packed_attention.py), a Python loop over a data-dependent segment list, so a whole-model
compile specialises on every packing layout and recompiles each step (measured: 54 s to compile,
then 23 tok/s against 245 eager). Compiling each block with dynamic shapes, with the packed
attention left eager (it is marked ``torch.compiler.disable``), traces one graph for every row
length and layout: the norms, rotary, SwiGLU, residual adds, dtype casts and the adapters' small
ops around the big matmuls are fused into a few kernels, forward and backward.

It costs a compile at the first step (about 50 s for smollm2-135m on 2 cores; about 10 s once
inductor's on-disk cache is warm) and pays back over a run's later steps, so it is off by default.
The blocks are compiled in place (``nn.Module.compile``): parameter names, checkpoints and saved
adapters are the same as without it; after training the blocks run eagerly again, so evaluation
and export never see a compiled module.
"""
from __future__ import annotations

from contextlib import contextmanager

from ..core.errors import TunelabError


def transformer_blocks(model):
    """The model's stack of transformer blocks: its longest ``nn.ModuleList`` of modules of one class."""
    from torch import nn

    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    return best


@contextmanager
def compiled_blocks(model, active: bool):
    """Within the block, ``model``'s transformer blocks run compiled (dynamic shapes); eager again after."""
    if not active:
        yield
        return
    blocks = transformer_blocks(model)
    if blocks is None:
        raise TunelabError(f"train.compile: found no stack of transformer blocks in {type(model).__name__}; "
                           "set train.compile to false")
    for block in blocks:
        block.compile(dynamic=True)
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None  # what nn.Module.compile set: the eager forward again
