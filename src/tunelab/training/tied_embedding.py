"""A trained embedding tied to the LM head: its gradient rows are added into the shared gradient in place.

When the input embedding and the LM head share one weight (SmolLM2, Llama 3.2, Gemma...) and that
weight trains (full fine-tuning), PyTorch's embedding backward builds a dense (vocab x hidden)
gradient per micro-batch: a zero-fill of the whole matrix (28M values for a 49k vocabulary) and a
scatter of the few hundred rows the batch used; autograd then adds that matrix to the head's
gradient, another full pass. Measured on a 2-core AMX Xeon: fill 27 ms + add 34 ms per micro-batch
of one 512-token row, ~3% of a full-fine-tuning step (docs/performance.md).

Turning the embedding's ``sparse`` flag on removes the fill but not the pass: autograd sums a sparse
gradient into a dense one out of place (a tensor that is sparse counts as "subclass-like" to its
in-place rule), copying the (vocab x hidden) matrix once more, 42 ms per micro-batch. So instead,
while training, the embedding lookup is one autograd function whose backward hands the weight no
gradient at all: it queues a callback for the end of the backward pass that adds the used rows
into the weight's accumulated ``.grad`` with ``index_add_``, after the head's dense gradient has
landed there. The same sum; the optimizer and gradient clipping see one dense fp32 gradient; a
micro-batch that reaches only the embedding (no loss positions, so no head) starts a dense
gradient of zeros first.

Single-process runs only: DistributedDataParallel reduces gradients as autograd accumulates them,
and rows added after the pass would miss that reduction. With `train.row_threads` the rows of all
threads' passes wait until every pass has finished (`RowAdder.held`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch


def tied_trained_embedding(model):
    """The model's input ``nn.Embedding`` when it shares its weight with the output embeddings, that
    weight trains, and the lookup is a plain one (no max_norm renormalising, no frequency scaling,
    not sparse); else None."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    embedding, head = get_in(), get_out()
    if not isinstance(embedding, torch.nn.Embedding) or head is None or getattr(head, "weight", None) is None:
        return None
    weight = embedding.weight
    plain = embedding.max_norm is None and not embedding.scale_grad_by_freq and not embedding.sparse
    if head.weight is not weight or not weight.requires_grad or not plain:
        return None
    return embedding


class RowAdder:
    """Adds gradient rows into ``weight.grad``: at the end of each backward pass, or, while `held`,
    once after every pass in the block has finished."""

    def __init__(self, weight):
        self.weight = weight
        self._held: list | None = None
        self._lock = threading.Lock()

    def add(self, index, rows) -> None:
        weight = self.weight
        if weight.grad is None:  # the head did not run in this micro-batch (and none before it)
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, index, rows.to(weight.grad.dtype))

    def after_backward(self, index, rows) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append((index, rows))
                return
        torch.autograd.Variable._execution_engine.queue_callback(lambda: self.add(index, rows))

    @contextmanager
    def held(self):
        """Within the block, rows wait and are added on leaving it. For backward passes that run side by
        side in threads (train.row_threads): autograd adds each pass's head gradient into ``.grad`` under
        its own lock, which an ``index_add_`` of ours at the end of one pass would race with."""
        with self._lock:
            self._held = []
        try:
            yield
            held = self._held
        finally:
            with self._lock:
                self._held = None
        for index, rows in held:
            self.add(index, rows)


class _RowsAddedAfterBackward(torch.autograd.Function):
    """``F.embedding(ids, weight, padding_idx)``; backward hands the rows to a `RowAdder` instead of
    returning a gradient for autograd to sum."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, adder):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.adder = padding_idx, adder
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        index, rows = ids.reshape(-1), grad.reshape(-1, grad.size(-1))
        if ctx.padding_idx is not None:  # the padding row gets no gradient, as in F.embedding
            keep = index != ctx.padding_idx
            index, rows = index[keep], rows[keep]
        ctx.adder.after_backward(index, rows)
        return None, None, None, None


@contextmanager
def embedding_rows_in_place(model, active: bool = True):
    """Within the block, a tied, trained input embedding (see `tied_trained_embedding`) adds its gradient
    rows into the shared weight's gradient in place; its forward is restored after. Yields the
    `RowAdder` when it was switched, else None."""
    embedding = tied_trained_embedding(model) if active else None
    if embedding is None:
        yield None
        return
    adder = RowAdder(embedding.weight)

    def forward(ids):
        return _RowsAddedAfterBackward.apply(ids, embedding.weight, embedding.padding_idx, adder)

    embedding.forward = forward
    try:
        yield adder
    finally:
        del embedding.forward  # back to the class's forward
