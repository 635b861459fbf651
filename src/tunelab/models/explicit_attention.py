"""Causal attention as two batched matmuls and a softmax, for short low-precision training segments on CPUs.

PyTorch's CPU flash attention is slow to train through in bf16 at the segment lengths packed SFT
rows hold (tens to a few hundred tokens): its backward walks small tiles with vector code, where
a plain ``bmm`` runs on the CPU's matrix units (AMX). Measured fwd+bwd of one causal segment, 9
query / 3 key-value heads of 64, bf16, on a 2-core AMX Xeon (median of 20, alternating): 120
tokens 1.64 ms here against 2.09 ms for flash in fp32 and 4.51 ms in bf16; 200 tokens 2.30 / 3.60
/ 5.42; 400 tokens 6.74 / 13.53 / 13.02; 500 tokens 15.95 / 22.21 / 19.68.

Grouped-query attention is folded into the matmuls' rows: the query heads that share a key-value
head are stacked, so one ``bmm`` per key-value head computes all their scores (no repeated keys,
taller matmuls). The causal mask is an additive bias fused into that matmul (``baddbmm``). The
(rows x tokens) probabilities are kept for backward, which is what makes the backward cheap;
that costs memory quadratic in the segment length, so callers use this for short segments only
(``models.packed_attention``). The backward is the textbook one: dV = Pᵀ dO, dP = dO Vᵀ,
dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = s·dS K, dK = s·dSᵀ Q.

A segment longer than `QUERY_BLOCK` tokens goes through in blocks of that many queries
(`_BlockedCausalAttention`): block i attends only the keys up to its own last token, so the
masked upper triangle is mostly never computed, and each block's (queries x keys) scores and
probabilities stay small enough to live in the core's cache. The whole-segment matrices fell off
that cliff on a 2-core AMD EPYC KVM guest (fwd+bwd of one bf16 segment, 9/3 heads of 64: 320
tokens 2.5-6 ms, 400 tokens 3-10 ms, 480 tokens 6-15 ms, swinging with the load on the host's
shared cache; in blocks of 128: 2.7, 3.8, 3.5 ms, docs/performance.md). There the queries are
stacked token-major (row t·G + g for token t of query head g in its group), so a block is a
contiguous run of rows; the key and value gradients add up over the blocks that see them.

A packed training row attends as one node (`packed_causal_attention`): the row is stacked and
copied once and every example reads its window of it in place, where one node per example cost
per-example slices, pads and concatenations in autograd, and for each slice a zero-filled
whole-row gradient added up in backward (fwd+bwd of a 512-token row of three examples, 9/3 heads
of 64, bf16, on the 2-core AMD EPYC: 5.1-6.1 ms against 7.4-8.6 ms, alternating).
"""
from __future__ import annotations

import math

import torch

_BIAS_CACHE: dict = {}  # (tokens, groups, dtype, token-major) -> additive causal bias; layers share them
_BIAS_CACHE_SIZE = 32
QUERY_BLOCK = 128  # queries per block for longer segments (see above); a segment this short is one matmul


def _causal_bias(tokens: int, groups: int, dtype: torch.dtype, token_major: bool = False) -> torch.Tensor:
    """(groups * tokens, tokens): 0 on and below the diagonal, -inf above, for each stacked query
    head: the heads' rows one after the other, or (``token_major``) each token's heads together."""
    key = (tokens, groups, dtype, token_major)
    bias = _BIAS_CACHE.get(key)
    if bias is None:
        if len(_BIAS_CACHE) >= _BIAS_CACHE_SIZE:
            _BIAS_CACHE.clear()
        triangle = torch.full((tokens, tokens), float("-inf"), dtype=dtype).triu(1)
        bias = triangle.repeat_interleave(groups, dim=0) if token_major else triangle.repeat(groups, 1)
        _BIAS_CACHE[key] = bias
    return bias


class _ExplicitCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale: float):
        batch, heads, tokens, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        stacked = query.reshape(batch * kv_heads, groups * tokens, dim)  # a copy when query is a strided slice
        keys = key.reshape(batch * kv_heads, tokens, dim)
        values = value.reshape(batch * kv_heads, tokens, dim)
        scores = torch.baddbmm(_causal_bias(tokens, groups, query.dtype), stacked, keys.transpose(1, 2), alpha=scale)
        probs = torch.softmax(scores, dim=-1)
        del scores
        out = torch.bmm(probs, values)
        ctx.save_for_backward(stacked, keys, values, probs)
        ctx.scale, ctx.shape = scale, (batch, heads, tokens, dim)
        return out.view(batch, heads, tokens, dim)

    @staticmethod
    def backward(ctx, grad_out):
        stacked, keys, values, probs = ctx.saved_tensors
        batch, heads, tokens, dim = ctx.shape
        kv_heads = keys.shape[0] // batch
        grad_out = grad_out.reshape(stacked.shape)
        grad_values = torch.bmm(probs.transpose(1, 2), grad_out)  # sums over the stacked query heads
        grad_probs = torch.bmm(grad_out, values.transpose(1, 2))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        grad_query = torch.bmm(grad_scores, keys).mul_(ctx.scale)
        grad_keys = torch.bmm(grad_scores.transpose(1, 2), stacked).mul_(ctx.scale)
        return (grad_query.view(batch, heads, tokens, dim), grad_keys.view(batch, kv_heads, tokens, dim),
                grad_values.view(batch, kv_heads, tokens, dim), None)


def _blocks(tokens: int):
    return [(start, min(start + QUERY_BLOCK, tokens)) for start in range(0, tokens, QUERY_BLOCK)]


class _BlockedCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale: float):
        batch, heads, tokens, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        # token-major stacked queries, pre-scaled (one pass does both): row t*groups + g
        stacked = torch.empty(batch, kv_heads, tokens, groups, dim, dtype=query.dtype, device=query.device)
        torch.mul(query.view(batch, kv_heads, groups, tokens, dim).transpose(2, 3), scale, out=stacked)
        stacked = stacked.view(batch * kv_heads, tokens * groups, dim)
        keys = key.reshape(batch * kv_heads, tokens, dim)
        values = value.reshape(batch * kv_heads, tokens, dim)
        outs, probs = [], []
        for start, end in _blocks(tokens):
            scores = torch.bmm(stacked[:, start * groups : end * groups], keys[:, :end].transpose(1, 2))
            scores[:, :, start:end].add_(_causal_bias(end - start, groups, scores.dtype, token_major=True))
            probs.append(torch.softmax(scores, dim=-1))
            del scores
            outs.append(torch.bmm(probs[-1], values[:, :end]))
        ctx.save_for_backward(stacked, keys, values, *probs)
        ctx.scale, ctx.shape = scale, (batch, kv_heads, groups, tokens, dim)
        return torch.cat(outs, dim=1).view(batch, kv_heads, tokens, groups, dim).transpose(2, 3).reshape(query.shape)

    @staticmethod
    def backward(ctx, grad_out):
        stacked, keys, values, *probs = ctx.saved_tensors
        batch, kv_heads, groups, tokens, dim = ctx.shape
        grad = torch.empty(batch, kv_heads, tokens, groups, dim, dtype=stacked.dtype, device=stacked.device)
        grad.copy_(grad_out.view(batch, kv_heads, groups, tokens, dim).transpose(2, 3))
        grad = grad.view(stacked.shape)
        grad_keys, grad_values, grad_queries = torch.zeros_like(keys), torch.zeros_like(values), []
        for (start, end), p in zip(_blocks(tokens), probs):
            rows = slice(start * groups, end * groups)
            grad_values[:, :end].baddbmm_(p.transpose(1, 2), grad[:, rows])
            grad_scores = torch._softmax_backward_data(torch.bmm(grad[:, rows], values[:, :end].transpose(1, 2)),
                                                       p, -1, p.dtype)
            grad_queries.append(torch.bmm(grad_scores, keys[:, :end]))
            grad_keys[:, :end].baddbmm_(grad_scores.transpose(1, 2), stacked[:, rows])  # stacked carries the scale
        grad_query = torch.cat(grad_queries, dim=1).mul_(ctx.scale)
        shape = (batch, kv_heads * groups, tokens, dim)
        return (grad_query.view(batch, kv_heads, tokens, groups, dim).transpose(2, 3).reshape(shape),
                grad_keys.view(batch, kv_heads, tokens, dim), grad_values.view(batch, kv_heads, tokens, dim), None)


def explicit_causal_attention(query, key, value, scale: float | None = None):
    """Causal attention of (batch, heads, tokens, dim) queries over (batch, kv_heads, tokens, dim)
    keys and values (kv_heads dividing heads), as SDPA with ``is_causal=True, enable_gqa=True``."""
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"query heads ({query.shape[1]}) are not a multiple of key-value heads ({key.shape[1]})")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    function = _BlockedCausalAttention if query.shape[2] > QUERY_BLOCK else _ExplicitCausalAttention
    return function.apply(query, key, value, scale)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _PackedCausalAttention(torch.autograd.Function):
    """Every packed example of one row, causal within itself, as one autograd node.

    The row's queries are stacked token-major and pre-scaled once, its keys and values copied once,
    each with `multiple` spare rows at the end; each example then attends in blocks of `QUERY_BLOCK`
    queries as `_BlockedCausalAttention` does, reading its window of the row in place. An example
    attends as if padded to a multiple of `multiple` tokens (few matmul shapes): the tokens past its
    end are the next example's (or the spare rows), which is harmless. Their keys come after every
    real query of the example, so the causal bias hides them; their query rows' outputs land where
    the next example's own outputs overwrite them (examples go in order); in backward their gradient
    rows are zeroed while the example runs and put back after, so the example's key and value
    gradients gain exactly zero from them."""

    @staticmethod
    def forward(ctx, query, key, value, segments, scale: float, multiple: int):
        _, heads, tokens, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        padded = tokens + multiple
        stacked = query.new_empty(kv_heads, padded, groups, dim)
        torch.mul(query[0].view(kv_heads, groups, tokens, dim).transpose(1, 2), scale, out=stacked[:, :tokens])
        stacked[:, tokens:].zero_()
        stacked = stacked.view(kv_heads, padded * groups, dim)
        keys, values = (query.new_empty(kv_heads, padded, dim) for _ in range(2))
        for whole, part in ((keys, key), (values, value)):
            whole[:, :tokens].copy_(part[0])
            whole[:, tokens:].zero_()
        out = query.new_empty(kv_heads, padded * groups, dim)
        probs = []
        for start, end in segments:
            for a, b in _blocks(_round_up(end - start, multiple)):
                rows = slice((start + a) * groups, (start + b) * groups)
                scores = torch.bmm(stacked[:, rows], keys[:, start : start + b].transpose(1, 2))
                scores[:, :, a:b].add_(_causal_bias(b - a, groups, scores.dtype, token_major=True))
                probs.append(torch.softmax(scores, dim=-1))
                del scores
                torch.bmm(probs[-1], values[:, start : start + b], out=out[:, rows])
        ctx.save_for_backward(stacked, keys, values, *probs)
        ctx.scale, ctx.segments, ctx.multiple = scale, segments, multiple
        ctx.shape = (kv_heads, groups, tokens, dim)
        # (tokens, heads, dim) in memory, handed back as a (1, heads, tokens, dim) view: the layout
        # the attention module's output projection reads, so the caller's transpose is free
        out = out.view(kv_heads, padded, groups, dim)[:, :tokens].permute(1, 0, 2, 3).contiguous()
        return out.view(1, tokens, heads, dim).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        stacked, keys, values, *probs = ctx.saved_tensors
        kv_heads, groups, tokens, dim = ctx.shape
        multiple, padded = ctx.multiple, tokens + ctx.multiple
        grad = stacked.new_empty(kv_heads, padded, groups, dim)
        grad[:, :tokens].copy_(grad_out[0].view(kv_heads, groups, tokens, dim).transpose(1, 2))
        grad[:, tokens:].zero_()
        grad = grad.view(stacked.shape)
        grad_stacked = torch.empty_like(stacked)
        grad_keys, grad_values = torch.zeros_like(keys), torch.zeros_like(values)
        blocks = iter(probs)
        for start, end in ctx.segments:
            length = _round_up(end - start, multiple)
            spare = slice(end * groups, (start + length) * groups)  # the next example's rows, if any
            kept = grad[:, spare].clone() if end < tokens and start + length > end else None
            if kept is not None:
                grad[:, spare].zero_()
            for a, b in _blocks(length):
                p = next(blocks)
                rows = slice((start + a) * groups, (start + b) * groups)
                window = slice(start, start + b)
                grad_values[:, window].baddbmm_(p.transpose(1, 2), grad[:, rows])
                grad_scores = torch._softmax_backward_data(torch.bmm(grad[:, rows], values[:, window].transpose(1, 2)),
                                                           p, -1, p.dtype)
                torch.bmm(grad_scores, keys[:, window], out=grad_stacked[:, rows])
                grad_keys[:, window].baddbmm_(grad_scores.transpose(1, 2), stacked[:, rows])  # stacked carries the scale
            if kept is not None:
                grad[:, spare] = kept
        grad_query = (grad_stacked.view(kv_heads, padded, groups, dim)[:, :tokens].mul_(ctx.scale)
                      .permute(0, 2, 1, 3).reshape(1, kv_heads * groups, tokens, dim))
        return grad_query, grad_keys[None, :, :tokens], grad_values[None, :, :tokens], None, None, None


def packed_causal_attention(query, key, value, segments, scale: float | None = None, multiple: int = 1):
    """Causal attention within each ``(start, end)`` segment of one packed row: (1, heads, tokens, dim)
    queries over (1, kv_heads, tokens, dim) keys and values, as SDPA on each segment alone. Each
    segment attends as if padded to a multiple of ``multiple`` tokens (the result is the same)."""
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"query heads ({query.shape[1]}) are not a multiple of key-value heads ({key.shape[1]})")
    if query.shape[0] != 1:
        raise ValueError(f"one packed row at a time (got a batch of {query.shape[0]})")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _PackedCausalAttention.apply(query, key, value, tuple(segments), scale, max(1, multiple))
