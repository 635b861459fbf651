"""Packed rows' attention (models/packed_attention.py): which path a segment or a row takes, and
that each path gives the per-example result."""
import pytest
import torch
import torch.nn.functional as F

from tunelab.models import packed_attention


def _spy_sdpa(monkeypatch) -> list:
    """Record the dtypes (query, key, value) and autocast state of every SDPA call packed attention makes."""
    calls, original = [], F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        calls.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(packed_attention.F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("length, explicit", [(40, True), (packed_attention.EXPLICIT_TRAINING_SEGMENT, True),
                                              (packed_attention.EXPLICIT_TRAINING_SEGMENT + 8, False)])
def test_bf16_training_segments_up_to_the_limit_skip_flash_attention(length, explicit, monkeypatch):
    """A bf16 segment that trains, up to the length limit, runs the explicit matmul attention (CPU
    flash attention is slow to train through in bf16), longer ones and inference keep SDPA in bf16;
    either way output and gradients are bf16, within bf16 rounding of the fp32 truth."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, 16, generator=g) for heads in (4, 2, 2))
    grad = torch.randn(1, 4, length, 16, generator=g)
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(q32, k32, v32, is_causal=True, enable_gqa=True).backward(grad)
    q16, k16, v16 = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    calls = _spy_sdpa(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = packed_attention._causal_attention(q16, k16, v16, 0.0, None, True)
    out.backward(grad.to(torch.bfloat16))
    assert calls == ([] if explicit else [(torch.bfloat16,) * 3 + (True,)])
    assert out.dtype == q16.grad.dtype == k16.grad.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q32.detach(), k32.detach(), v32.detach(), is_causal=True,
                                               enable_gqa=True)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    for got, truth in ((q16.grad, q32.grad), (k16.grad, k32.grad), (v16.grad, v32.grad)):
        torch.testing.assert_close(got.float(), truth, atol=5e-2, rtol=5e-2)
    with torch.no_grad():  # inference keeps the faster bf16 flash forward
        calls.clear()
        packed_attention._causal_attention(q16, k16, v16, 0.0, None, True)
        assert calls == [(torch.bfloat16,) * 3 + (False,)]


def test_fp32_training_and_attention_dropout_keep_sdpa(monkeypatch):
    """The explicit path is for low-precision training only: fp32 segments (no AMX: fp32 training)
    and segments with attention dropout, which it does not implement, still go to SDPA."""
    q, k, v = (torch.randn(1, heads, 30, 16).requires_grad_() for heads in (4, 2, 2))
    calls = _spy_sdpa(monkeypatch)
    packed_attention._causal_attention(q, k, v, 0.0, None, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed_attention._causal_attention(q, k, v, 0.1, None, True)
    assert calls == [(torch.float32,) * 3 + (False,), (torch.float32,) * 3 + (True,)]


def test_under_autocast_a_promoted_fp32_query_still_takes_the_explicit_path_and_returns_bf16(monkeypatch):
    """Full fine-tuning: fp32 rotary tables promote query and key to fp32 while value stays bf16; the
    segment still attends in bf16 on the explicit path (as autocast would have sent it to bf16 SDPA),
    hands back bf16, and each input gets its gradient in its own dtype."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, heads, 30, 16, generator=g).requires_grad_() for heads in (4, 2))
    v = torch.randn(1, 2, 30, 16, generator=g).to(torch.bfloat16).requires_grad_()
    calls = _spy_sdpa(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = packed_attention._causal_attention(q, k, v, 0.0, None, True)
    out.float().sum().backward()
    assert calls == []
    assert out.dtype == torch.bfloat16 and v.grad.dtype == torch.bfloat16 and q.grad.dtype == torch.float32
    assert k.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def test_explicit_attention_pads_a_segment_to_few_shapes_with_the_same_result(monkeypatch):
    """A bf16 training segment of 37 tokens attends as 48 (a multiple of SEGMENT_MULTIPLE): the padded
    keys come after every real query, so output and gradients equal the unpadded path's."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, 37, 16, generator=g).to(torch.bfloat16) for heads in (4, 2, 2))
    grad = torch.randn(1, 4, 37, 16, generator=g).to(torch.bfloat16)
    seen = []
    explicit = packed_attention.explicit_causal_attention
    monkeypatch.setattr(packed_attention, "explicit_causal_attention",
                        lambda query, *rest: seen.append(query.shape[2]) or explicit(query, *rest))

    def attend(multiple):
        monkeypatch.setattr(packed_attention, "SEGMENT_MULTIPLE", multiple)
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = packed_attention._causal_attention(*inputs, 0.0, None, True)
        out.backward(grad)
        return out, [t.grad for t in inputs]

    plain_out, plain_grads = attend(1)
    padded_out, padded_grads = attend(16)
    assert seen == [37, 48]
    assert padded_out.shape == plain_out.shape and padded_out.dtype == torch.bfloat16
    torch.testing.assert_close(padded_out, plain_out, atol=1e-2, rtol=1e-2)
    for padded, plain in zip(padded_grads, plain_grads):
        torch.testing.assert_close(padded, plain, atol=1e-2, rtol=1e-2)


def test_a_bf16_training_row_attends_in_one_node_as_its_segments_would_alone(monkeypatch):
    """Packed bf16 training rows go through `packed_causal_attention` once per row (no per-segment
    slices in autograd), with the same output and gradients as attending each segment alone; a row
    holding a segment past the explicit path's limit keeps the per-segment path."""
    g = torch.Generator().manual_seed(0)
    positions = torch.cat([torch.arange(n) for n in (37, 20, 1, 70)])[None]  # 128 tokens, 4 examples
    q, k, v = (torch.randn(2, 128, heads, 16, generator=g).to(torch.bfloat16).transpose(1, 2)
               for heads in (4, 2, 2))
    grad = torch.randn(2, 128, 4, 16, generator=g).to(torch.bfloat16)
    rows = []
    whole = packed_attention.packed_causal_attention
    monkeypatch.setattr(packed_attention, "packed_causal_attention",
                        lambda *args, **kw: rows.append(args[3]) or whole(*args, **kw))

    def attend(row_node: bool):
        if not row_node:
            monkeypatch.setattr(packed_attention, "EXPLICIT_TRAINING_SEGMENT", 36)  # the 37-token one is past it
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = packed_attention.packed_sdpa_forward(None, *inputs, None, position_ids=positions)
        out.backward(grad)
        return [out.detach()] + [t.grad for t in inputs]

    one_node = attend(True)
    assert [list(r) for r in rows] == [[(0, 37), (37, 57), (57, 58), (58, 128)]] * 2
    rows.clear()
    per_segment = attend(False)
    assert rows == []
    assert one_node[0].shape == (2, 128, 4, 16) and one_node[0].dtype == torch.bfloat16
    for got, want in zip(one_node, per_segment):  # the 37-token segment went to SDPA: bf16 rounding apart
        torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
