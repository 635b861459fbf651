"""A trained, tied input embedding gets its gradient rows added in place, not as a second dense matrix.

When the input embedding and the LM head share one weight (SmolLM2, Llama 3.2, Gemma...) and that
weight trains (full fine-tuning), PyTorch's embedding backward builds a dense (vocab x hidden)
gradient per micro-batch: a zero-fill of the whole matrix (28M values for a 49k vocabulary) and a
scatter of the few hundred rows the batch used; autograd then adds that matrix to the head's
gradient, another full pass. Measured on a 2-core AMX Xeon: fill 27 ms + add 34 ms per micro-batch
of one 512-token row, ~3% of a full-fine-tuning step (docs/performance.md).

With the embedding's ``sparse`` flag on, its backward returns only the used rows (a sparse
gradient), and autograd adds those rows into the head's dense gradient in place before the shared
weight's gradient is accumulated: the same sum, and the optimizer and gradient clipping still see
one dense fp32 gradient. Should a step use the embedding but not the head (a micro-batch without
loss positions skips the head), a hook turns the accumulated sparse gradient dense at once.

Single-process runs only: DistributedDataParallel decides at wrap time which parameters get sparse
gradients, and there the shared weight's gradient is dense.
"""
from __future__ import annotations

from contextlib import contextmanager


def tied_trained_embedding(model):
    """The model's input ``nn.Embedding`` when it shares its weight with the output embeddings and that
    weight trains; else None."""
    import torch

    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    embedding, head = get_in(), get_out()
    if not isinstance(embedding, torch.nn.Embedding) or head is None or getattr(head, "weight", None) is None:
        return None
    weight = embedding.weight
    if head.weight is not weight or not weight.requires_grad or embedding.sparse:
        return None
    return embedding


def _densify(param) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


@contextmanager
def sparse_tied_embedding_grads(model, active: bool = True):
    """Within the block, a tied, trained input embedding (see `tied_trained_embedding`) backpropagates
    sparse rows; restored after. Yields whether it was switched."""
    embedding = tied_trained_embedding(model) if active else None
    if embedding is None:
        yield False
        return
    embedding.sparse = True
    hook = embedding.weight.register_post_accumulate_grad_hook(_densify)
    try:
        yield True
    finally:
        hook.remove()
        embedding.sparse = False
