"""The causal LM's head and loss as one autograd node, on loss positions only, in slices of rows.

`causal_lm_loss` (stages/_lm.py) runs the model with its LM head switched to an identity
(`hidden_states_as_logits`), keeps the hidden states of the positions that carry loss, and hands
them to `chunked_lm_loss_sum`: the logits are formed by matmuls over groups of rows (`HEAD_SLICE`
rows in fp32, up to `HEAD_MATMUL_ROWS` in a low dtype), turned into the gradient (softmax - one-hot)
`HEAD_SLICE` rows at a time in forward while training, so backward is matmuls only (a trained head
under bf16 autocast keeps every slice's for one weight-gradient matmul at the end).
docs/performance.md, the ninth to eleventh and fourteenth sessions.
"""
from __future__ import annotations

import contextlib
import functools
import threading

from ..core.lazy import F, torch
from ..data.tokenize import IGNORE

# Matmul shapes in few sizes (see stages/_lm.ROW_MULTIPLE): the loss-position count differs in every
# micro-batch, so it is rounded up.
HEAD_MULTIPLE = 32  # loss positions are padded to a multiple of this with zero rows that carry no loss
HEAD_SLICE = 128  # rows of the LM head's logits turned into (softmax - one-hot) at a time, in fp32
HEAD_MATMUL_ROWS = 512  # rows per head matmul in a low dtype (see _head_cross_entropy)


_head_switch = threading.local()  # per thread: is this thread's forward inside hidden_states_as_logits?
_head_lock = threading.Lock()
_head_users: dict = {}  # id(head) -> [threads inside, the head's own forward]


def switched_head_autocast():
    """The autocast dtype this thread's last forward inside `hidden_states_as_logits` ran under (or None)."""
    return getattr(_head_switch, "autocast", None)


def _identity_while_switched(original):
    def forward(hidden):
        if not getattr(_head_switch, "on", False):
            return original(hidden)
        device = hidden.device.type
        _head_switch.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return hidden

    return forward


@contextlib.contextmanager
def hidden_states_as_logits(head: torch.nn.Module):
    """Make the LM head an identity for one forward, so the model returns (B, T, H) hidden states.

    The identity notes the autocast dtype the head would have computed in (``_head_switch.autocast``,
    None without autocast): mixed precision (accelerate) wraps the model's forward only, so the loss
    after it runs outside autocast and learns the head's compute dtype from there.

    Thread-safe (train.row_threads runs forwards side by side): the first thread in swaps in a
    forward that is the identity only for threads inside this context, the last one out restores it.
    """
    with _head_lock:
        users = _head_users.get(id(head))
        if users is None:
            original = head.forward
            head.forward = _identity_while_switched(original)
            users = _head_users[id(head)] = [0, original]
        users[0] += 1
    _head_switch.on, _head_switch.autocast = True, None
    try:
        yield
    finally:
        _head_switch.on = False
        with _head_lock:
            users[0] -= 1
            if users[0] == 0:
                head.forward = users[1]
                del _head_users[id(head)]


def _head_compute_dtype(hidden, weight, autocast) -> "torch.dtype":
    """The dtype the head's matmuls run in: the autocast dtype the model's forward ran under (``autocast``)
    or that is on now (a trained fp32 head under bf16 mixed precision computes in bf16, as the stock
    ``nn.Linear`` does: in fp32 it was ~4x slower on CPUs with bf16 units), else the head weight's own."""
    device = hidden.device.type
    if autocast is None and torch.is_autocast_enabled(device):
        autocast = torch.get_autocast_dtype(device)
    return autocast if autocast is not None and weight.is_floating_point() else weight.dtype


_head_buffers = threading.local()  # per thread (train.row_threads): head weight -> {purpose: reused buffer}


def _head_buffer(weight, purpose: str, dtype) -> torch.Tensor:
    """A (vocab x hidden) buffer in ``dtype`` kept for ``weight`` while it lives, reused every call.

    Fresh tensors of this size (56 MB in bf16 for smollm2-135m) are mapped from the kernel and faulted
    in page by page each time they are made: a fresh bf16 copy of the fp32 head took 18 ms where
    copying into a kept buffer took 4 (docs/performance.md)."""
    from torch.utils.weak import WeakIdKeyDictionary

    kept = getattr(_head_buffers, "by_weight", None)
    if kept is None:
        kept = _head_buffers.by_weight = WeakIdKeyDictionary()
    buffers = kept.setdefault(weight, {})
    buffer = buffers.get(purpose)
    if buffer is None or buffer.dtype != dtype or buffer.shape != weight.shape:
        buffer = buffers[purpose] = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    return buffer


def _head_weight_in(weight, dtype) -> torch.Tensor:
    """``weight`` in ``dtype``: itself, or its values copied into a kept buffer (a trained fp32 head under
    bf16 autocast changes every optimizer step, so the copy is refreshed on every call)."""
    if weight.dtype == dtype:
        return weight.detach()
    return _head_buffer(weight, "weight", dtype).copy_(weight.detach())


@functools.cache
def _head_cross_entropy():
    """The LM head and cross-entropy of a batch's loss positions as one autograd node that computes
    its gradients in forward: d(loss)/d(logits) = softmax - one-hot is formed in place on the fp32
    logits and multiplied by the head at once, so only (positions x hidden) is kept [and, when the head
    trains, its (vocab x hidden) gradient: summed over the slices in place for an fp32 head; in bf16 (a
    trained fp32 head under bf16 autocast computes in bf16, `_head_compute_dtype`) one matmul over every
    slice's softmax - one-hot at the end, as the stock autocast path computes it; a tied embedding's rows
    are added into it after backward: training/tied_embedding.py]. Stock cross-entropy keeps the
    log-softmax for backward, fills a zero gradient of the same (positions x vocab) size and runs a
    log-softmax backward pass over it (~60 ms a LoRA step on smollm2-135m, docs/performance.md).

    The positions go through in slices of `HEAD_SLICE` rows that reuse one pair of (slice x vocab)
    buffers, bf16 and fp32, written in place: whole-batch logits with their fp32 copy and log-sum-exp
    temporaries were ~300 MB of fresh memory per micro-batch, which the C allocator maps from the
    kernel and faults in page by page every time (60k page faults and 155 ms for 416 positions of
    smollm2-135m, against 1k and 95 ms in slices; full fine-tuning 126k -> 37k faults per step;
    docs/performance.md). In a low dtype the matmuls run over groups of up to `HEAD_MATMUL_ROWS` rows
    (one bf16 (group x vocab) buffer, 50 MB for smollm2-135m), still turned into (softmax - one-hot) a
    `HEAD_SLICE` at a time in fp32: the head's (vocab x hidden) weight is then read once per group, not
    once per slice, in a taller matmul (fwd+bwd of 448 loss positions of smollm2-135m in bf16 on a 2-core
    AMD EPYC: paired ratio 0.83 against matmuls of 128 rows; docs/performance.md). Without gradients
    (evaluation) the same groups and slices give the loss alone."""

    class HeadCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, autocast):
            compute = _head_compute_dtype(hidden, weight, autocast)
            h, w = hidden.to(compute), _head_weight_in(weight, compute)
            valid = (targets != IGNORE).unsqueeze(1)
            safe = targets.clamp(min=0).unsqueeze(1)
            need_hidden, need_weight, _, _ = ctx.needs_input_grad
            same = compute == torch.float32  # an fp32 head: one buffer, no copies
            # A trained head in low precision keeps every slice's (softmax - one-hot) for one weight-gradient
            # matmul at the end (what autocast's stock path computes, and a taller, faster matmul than one per slice).
            whole = need_weight and not same
            # Rows per matmul: in a low dtype up to HEAD_MATMUL_ROWS (the elementwise work stays in slices)
            group_rows = h.size(0) if whole else min(HEAD_SLICE if same else HEAD_MATMUL_ROWS, h.size(0))
            logits = torch.empty(group_rows, w.size(0), dtype=compute, device=h.device)
            logits32 = logits if same else torch.empty(min(HEAD_SLICE, h.size(0)), w.size(0), dtype=torch.float32,
                                                       device=h.device)
            grad_hidden = torch.empty_like(h) if need_hidden else None
            # a trained fp32 head's gradient, summed over the slices in place
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight and same else None
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            for first in range(0, h.size(0), group_rows):
                last = min(first + group_rows, h.size(0))
                group = logits[: last - first]
                torch.mm(h[first:last], w.t(), out=group)
                for start in range(first, last, HEAD_SLICE):
                    end = min(start + HEAD_SLICE, last)
                    part = group[start - first : end - first]
                    part32 = part if same else logits32[: end - start]
                    if not same:
                        part32.copy_(part)
                    top = part32.amax(1, keepdim=True)
                    target_logit = part32.gather(1, safe[start:end])
                    norm = part32.sub_(top).exp_().sum(1, keepdim=True)  # exp(logit - max), in place
                    keep = valid[start:end].to(torch.float32)
                    loss += ((norm.log() + top - target_logit) * keep).sum()
                    if need_hidden or need_weight:  # (softmax - one-hot), zero on ignored rows, in the compute dtype
                        part32.mul_(keep / norm).scatter_add_(1, safe[start:end], -keep)
                        if not same:
                            part.copy_(part32)
                        if need_weight and same:
                            grad_weight.addmm_(part.t(), h[start:end])
                if need_hidden:
                    torch.mm(group, w, out=grad_hidden[first:last])
            if whole:  # into a kept buffer when a cast to the weight's dtype follows (else autograd keeps it)
                kept = _head_buffer(weight, "grad", compute) if weight.dtype != compute else None
                grad_weight = torch.mm(logits.t(), h, out=kept) if kept is not None else torch.mm(logits.t(), h)
            ctx.save_for_backward(None if grad_hidden is None else grad_hidden.to(hidden.dtype),
                                  None if grad_weight is None else grad_weight.to(weight.dtype))
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            # scaled in place: the node's gradients are formed once, for the one backward pass they serve
            grad_hidden, grad_weight = ctx.saved_tensors
            return (None if grad_hidden is None else grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)),
                    None if grad_weight is None else grad_weight.mul_(grad_loss.to(grad_weight.dtype)), None, None)

    return HeadCrossEntropy


def chunked_lm_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        autocast: "torch.dtype | None" = None) -> torch.Tensor:
    """Sum of cross-entropy over positions without ever materialising (positions x vocab) logits: one
    autograd node (`_head_cross_entropy`) forms them a group of rows at a time and, while training,
    the gradients with them. The positions are padded with ignored rows to a multiple of
    `HEAD_MULTIPLE`, so the last slice comes in few shapes. ``autocast``: the dtype the model's forward
    ran under autocast in, if any (the head computes in it, see `_head_compute_dtype`)."""
    if hidden.size(0) == 0:
        return hidden.new_zeros((), dtype=torch.float32)
    extra = -hidden.size(0) % HEAD_MULTIPLE
    if extra:
        hidden, targets = F.pad(hidden, (0, 0, 0, extra)), F.pad(targets, (0, extra), value=IGNORE)
    return _head_cross_entropy().apply(hidden, weight, targets, autocast)
