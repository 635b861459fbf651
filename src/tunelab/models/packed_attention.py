"""Attention for packed rows that never builds a mask: one causal SDPA call per packed example.

Stock transformers turns packed `position_ids` into a dense block-diagonal (T x T) mask, so SDPA
attends over the whole row (cost ~ T^2) through its masked path, with key/value heads repeated
for grouped-query attention. Packed examples are independent, so attending within each one
separately (cost ~ sum of L_i^2) gives the same result with the unmasked causal kernel (or, for a
short segment training in bf16 on a CPU, the explicit matmul path of ``explicit_attention``: a row
whose examples all take it attends as one autograd node, `packed_causal_attention`, rather than as
one sliced, padded and concatenated piece per example).

Registered with transformers' AttentionInterface under `NAME`; a model opts in with
`model.set_attn_implementation(NAME)`. Anything that is not a maskless packed row (padding
masks, a KV cache during generation) goes to the stock SDPA path, so the switch is always safe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .explicit_attention import explicit_causal_attention, packed_causal_attention

NAME = "tunelab_packed_sdpa"

# PyTorch's CPU flash attention is slow to train through in bf16 (its backward above all), so a
# training segment up to this length that would attend in bf16/fp16 on a CPU runs as batched matmuls
# and a softmax instead (models/explicit_attention.py: 1.2-2x faster than flash in its faster dtype
# from 120 to 500 tokens on an AMX Xeon, on par at 60). It keeps each segment's (heads x tokens x
# tokens) probabilities for backward, so the length is capped: at 512 that is 4.5 MB per layer for
# 9 heads in bf16.
EXPLICIT_TRAINING_SEGMENT = 512
# The explicit path pads each segment to a multiple of this many tokens: its batched matmuls then
# come in few shapes (oneDNN compiles and keeps a kernel per shape: ~0.5 MB each on AMX, see
# stages/_lm.ROW_MULTIPLE), for at most 15 tokens of extra work. The padded keys come after every
# real query, so the causal mask hides them; the padded queries' outputs are dropped.
SEGMENT_MULTIPLE = 16


_last_segments: tuple = (None, None)  # (position_ids, segments): every layer gets the same tensor


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, (start, end) of each packed example: as in transformers' own packing detection,
    a new one begins wherever the position does not follow on from the previous one.
    Computed once per forward; the other layers reuse it."""
    global _last_segments
    last = _last_segments  # one read: another thread (train.row_threads) may replace it meanwhile
    if last[0] is position_ids:
        return last[1]
    breaks = position_ids[:, 1:] != position_ids[:, :-1] + 1
    length = position_ids.shape[1]
    bounds = []
    for row in breaks:
        starts = [0] + (row.nonzero().flatten() + 1).tolist()
        bounds.append(list(zip(starts, starts[1:] + [length])))
    _last_segments = (position_ids, bounds)
    return bounds


@torch.compiler.disable  # a loop over data-dependent segments: compiled blocks (train.compile) run it eagerly
def packed_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: query heads per key head
    rows = []
    per_row = _segments(position_ids)
    if len(per_row) == 1:  # one position row shared by the whole batch
        per_row = per_row * query.shape[0]
    for b, segments in enumerate(per_row):
        row = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        low = _explicit_dtype(row[0], dropout, max(e - s for s, e in segments))
        if low is not None:  # the whole row in one node (models/explicit_attention.py), no per-segment slices
            with torch.autocast("cpu", enabled=False):  # the inputs in one low dtype, as autocast would give SDPA
                rows.append(packed_causal_attention(*(x.to(low) for x in row), segments, scaling, SEGMENT_MULTIPLE))
            continue
        parts = [_causal_attention(query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                                   dropout, scaling, groups > 1)
                 for s, e in segments]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def _causal_attention(query, key, value, dropout, scaling, gqa: bool):
    """One packed example's causal attention; a short training segment that would attend in bf16/fp16
    on a CPU runs the explicit matmul path instead of flash attention (see above). "Would": the
    inputs' dtype, or autocast's, which casts SDPA's inputs down even when rotary embeddings in fp32
    have promoted the query and key to fp32."""
    low = _explicit_dtype(query, dropout, query.shape[2])
    if low is not None:
        tokens = query.shape[2]
        extra = -tokens % SEGMENT_MULTIPLE
        with torch.autocast("cpu", enabled=False):  # the inputs in one low dtype, as autocast would give SDPA
            query, key, value = (F.pad(x.to(low), (0, 0, 0, extra)) if extra else x.to(low)
                                 for x in (query, key, value))
            out = explicit_causal_attention(query, key, value, scaling)
        return out[:, :, :tokens] if extra else out
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True,
                                          enable_gqa=gqa)


def _explicit_dtype(query, dropout, longest: int):
    """The low dtype a training segment of ``longest`` tokens at most attends in on the explicit path,
    or None where it takes SDPA (see above)."""
    on_cpu = query.device.type == "cpu"
    low = torch.get_autocast_dtype("cpu") if on_cpu and torch.is_autocast_enabled("cpu") else query.dtype
    if (on_cpu and low in (torch.bfloat16, torch.float16) and query.requires_grad and torch.is_grad_enabled()
            and not dropout and longest <= EXPLICIT_TRAINING_SEGMENT):
        return low
    return None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for maskless packed rows (the forward splits them); the stock SDPA mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME
