"""The explicit (matmul + softmax) causal attention against SDPA: values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from tunelab.models import explicit_attention
from tunelab.models.explicit_attention import explicit_causal_attention


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


@pytest.mark.parametrize("batch, heads, kv_heads, tokens, strided",
                         [(1, 4, 4, 9, False), (1, 6, 2, 13, True), (2, 9, 3, 17, False), (1, 4, 1, 1, True)])
def test_matches_sdpa_in_values_and_gradients(batch, heads, kv_heads, tokens, strided):
    """Plain and grouped-query heads, batches, one-token segments and strided slices of a packed row:
    the output and the gradients of query, key and value equal causal SDPA's (float64)."""
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


def test_gradcheck_and_default_scale():
    """Finite-difference gradients, and the default scale 1/sqrt(dim) as SDPA's."""
    q, k, v = _inputs(1, 4, 2, 6, 4)
    assert torch.autograd.gradcheck(lambda a, b, c: explicit_causal_attention(a, b, c), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(explicit_causal_attention(q, k, v), ref)


def test_bf16_stays_within_rounding_of_the_fp64_truth():
    q, k, v = _inputs(1, 9, 3, 120, 64)
    truth = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = explicit_causal_attention(*low)
    assert out.dtype == torch.bfloat16
    rel = (out.double() - truth).norm() / truth.norm()
    assert rel < 1e-2


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
