"""The explicit (matmul + softmax) causal attention against SDPA: values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from tunelab.models import explicit_attention
from tunelab.models.explicit_attention import explicit_causal_attention, packed_causal_attention


def _inputs(batch, heads, kv_heads, tokens, dim, dtype=torch.float64, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    if strided:  # slices of a longer packed row, laid out (batch, tokens, heads, dim) as the model's are
        def make(h):
            full = torch.randn(batch, tokens + 7, h, dim, generator=g, dtype=dtype).transpose(1, 2)
            return full[:, :, 3 : 3 + tokens].detach().requires_grad_()
    else:
        def make(h):
            return torch.randn(batch, h, tokens, dim, generator=g, dtype=dtype).requires_grad_()
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("query_block", [128, 4, 5])  # one block; blocks of 4 (a last short one or not); of 5
@pytest.mark.parametrize("batch, heads, kv_heads, tokens, strided",
                         [(1, 4, 4, 9, False), (1, 6, 2, 13, True), (2, 9, 3, 17, False), (1, 4, 1, 1, True),
                          (1, 6, 3, 8, True)])
def test_matches_sdpa_in_values_and_gradients(monkeypatch, query_block, batch, heads, kv_heads, tokens, strided):
    """Plain and grouped-query heads, batches, one-token segments and strided slices of a packed row,
    in one piece or in query blocks: the output and the gradients of query, key and value equal
    causal SDPA's (float64)."""
    monkeypatch.setattr(explicit_attention, "QUERY_BLOCK", query_block)
    q, k, v = _inputs(batch, heads, kv_heads, tokens, 8, strided=strided)
    grad = torch.randn(batch, heads, tokens, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = explicit_causal_attention(q, k, v, scale=0.3)
    out.backward(grad)
    ours = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=kv_heads != heads)
    ref.backward(grad)
    for name, got, want in zip("out q k v".split(), ours, [ref.detach()] + [t.grad for t in (q, k, v)]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("query_block", [128, 4])
def test_gradcheck_and_default_scale(monkeypatch, query_block):
    """Finite-difference gradients, and the default scale 1/sqrt(dim) as SDPA's."""
    monkeypatch.setattr(explicit_attention, "QUERY_BLOCK", query_block)
    q, k, v = _inputs(1, 4, 2, 6, 4)
    assert torch.autograd.gradcheck(lambda a, b, c: explicit_causal_attention(a, b, c), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(explicit_causal_attention(q, k, v), ref)


@pytest.mark.parametrize("tokens", [120, 300])  # one block; three, the key/value gradients summed in bf16
def test_bf16_stays_within_rounding_of_the_fp64_truth(tokens):
    q, k, v = _inputs(1, 9, 3, tokens, 64)
    truth = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = explicit_causal_attention(*low)
    assert out.dtype == torch.bfloat16
    rel = (out.double() - truth).norm() / truth.norm()
    assert rel < 1e-2
    grad = torch.randn(truth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    truth.backward(grad)
    out.backward(grad.to(torch.bfloat16))
    for low_t, t in zip(low, (q, k, v)):
        assert low_t.grad.dtype == torch.bfloat16
        assert (low_t.grad.double() - t.grad).norm() / t.grad.norm() < 1e-2


def test_heads_must_be_a_multiple_of_key_value_heads():
    q, k, v = _inputs(1, 5, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        explicit_causal_attention(q, k, v)


def test_the_causal_bias_cache_stays_bounded():
    explicit_attention._BIAS_CACHE.clear()
    for tokens in range(1, 3 * explicit_attention._BIAS_CACHE_SIZE):
        bias = explicit_attention._causal_bias(tokens, 2, torch.float32)
        assert bias.shape == (2 * tokens, tokens)
    assert len(explicit_attention._BIAS_CACHE) <= explicit_attention._BIAS_CACHE_SIZE
    assert torch.equal(explicit_attention._causal_bias(3, 1, torch.float32).isinf(),
                       torch.ones(3, 3, dtype=torch.bool).triu(1))
    token_major = explicit_attention._causal_bias(3, 2, torch.float32, token_major=True).isinf()
    assert torch.equal(token_major, torch.ones(3, 3, dtype=torch.bool).triu(1).repeat_interleave(2, dim=0))


@pytest.mark.parametrize("multiple", [1, 4, 16])
@pytest.mark.parametrize("query_block", [128, 4, 5])
@pytest.mark.parametrize("bounds, strided", [((0, 5, 12, 13), True), ((0, 20), False), ((0, 1), True),
                                             ((0, 9, 30, 31, 50), True), ((0, 3, 11), False)])
def test_packed_row_matches_sdpa_on_each_segment(monkeypatch, multiple, query_block, bounds, strided):
    """A packed row's segments as one node, each attending as if padded to `multiple` tokens (the
    padding is the next segment's rows or the row's spare ones) and in query blocks: the output and
    the gradients of query, key and value equal causal SDPA on each segment alone (float64)."""
    monkeypatch.setattr(explicit_attention, "QUERY_BLOCK", query_block)
    segments = list(zip(bounds, bounds[1:]))
    tokens = bounds[-1]
    q, k, v = _inputs(1, 6, 2, tokens, 8, strided=strided)
    grad = torch.randn(1, 6, tokens, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = packed_causal_attention(q, k, v, segments, scale=0.3, multiple=multiple)
    out.backward(grad)
    ours = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                    scale=0.3, enable_gqa=True) for s, e in segments], dim=2)
    ref.backward(grad)
    for name, got, want in zip("out q k v".split(), ours, [ref.detach()] + [t.grad for t in (q, k, v)]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)
    # handed back in the (tokens, heads, dim) layout the output projection reads: the caller's transpose is free
    assert out.transpose(1, 2).is_contiguous()


def test_packed_row_in_bf16_stays_within_rounding_of_the_fp64_truth():
    segments = [(0, 37), (37, 200), (200, 201), (201, 300)]  # short, blocked, one token, padded past the row
    q, k, v = _inputs(1, 9, 3, 300, 64, strided=True)
    truth = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                      enable_gqa=True) for s, e in segments], dim=2)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = packed_causal_attention(*low, segments, multiple=16)
    assert out.dtype == torch.bfloat16
    assert (out.double() - truth).norm() / truth.norm() < 1e-2
    grad = torch.randn(truth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    truth.backward(grad)
    out.backward(grad.to(torch.bfloat16))
    for low_t, t in zip(low, (q, k, v)):
        assert low_t.grad.dtype == torch.bfloat16 and low_t.grad.shape == t.shape
        assert (low_t.grad.double() - t.grad).norm() / t.grad.norm() < 1e-2


def test_packed_row_takes_one_row_and_whole_groups_of_heads():
    q, k, v = _inputs(2, 4, 2, 6, 8)
    with pytest.raises(ValueError, match="one packed row"):
        packed_causal_attention(q, k, v, [(0, 6)])
    q, k, v = _inputs(1, 5, 2, 6, 8)
    with pytest.raises(ValueError, match="multiple"):
        packed_causal_attention(q, k, v, [(0, 6)])
