"""Dropout with the fast CPU mask (training/fast_dropout.py): the rate, the scale, the gradient,
repeatability under torch.manual_seed, eager attention equal to SDPA when nothing is dropped, and
the switch around a real (tiny) BERT: on while training, stock behaviour in eval and after the block."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.models import SEQ_CLS, load_model
from tunelab.training import fast_dropout as fd


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_drops_at_the_rate_asked_and_scales_to_keep_the_mean(p):
    torch.manual_seed(0)
    keep, scale = fd.keep_mask((1000, 1000), p)
    assert keep.dtype == torch.uint8 and keep.shape == (1000, 1000)
    assert set(keep.unique().tolist()) == {0, 1}
    kept = keep.float().mean().item()
    assert abs(kept - (1 - p)) < 0.002  # 10^6 draws: standard error <= 0.0005
    assert abs(scale - 1 / (1 - p)) < 1e-4  # the rate is p to within 2^-17
    x = torch.ones(1000, 1000, requires_grad=True)
    out = fd.dropout(x, p)
    assert abs(out.mean().item() - 1.0) < 0.01  # expectation preserved, as F.dropout


def test_the_mask_follows_torch_manual_seed_and_differs_call_to_call():
    torch.manual_seed(3)
    first, _ = fd.keep_mask((64, 64), 0.1)
    second, _ = fd.keep_mask((64, 64), 0.1)
    torch.manual_seed(3)
    again, _ = fd.keep_mask((64, 64), 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_output_and_gradient_use_the_same_mask_and_scale(dtype):
    torch.manual_seed(0)
    x = (torch.rand(32, 48) + 0.5).to(dtype).requires_grad_(True)
    out = fd.dropout(x, 0.25)
    assert out.dtype == dtype
    kept = out != 0
    scale = 65536 / (65536 - round(0.25 * 65536))
    torch.testing.assert_close(out[kept], (x[kept].float() * scale).to(dtype))
    grad = torch.randn(32, 48, dtype=dtype)
    out.backward(grad)
    expected = torch.where(kept, grad.float() * scale, 0.0).to(dtype)
    torch.testing.assert_close(x.grad, expected)


def test_dropout_is_stock_where_the_fast_mask_does_not_apply():
    x = torch.randn(8, 8)
    assert torch.equal(fd.dropout(x, 0.1, training=False), x)
    assert torch.equal(fd.dropout(x, 0.0), x)
    with torch.no_grad():  # evaluation-time code under no_grad: F.dropout itself
        torch.manual_seed(1)
        ours = fd.dropout(x, 0.3)
        torch.manual_seed(1)
        assert torch.equal(ours, F.dropout(x, 0.3, True))


def _keep_everything(monkeypatch):
    monkeypatch.setattr(fd, "keep_mask", lambda shape, p: (torch.ones(shape, dtype=torch.uint8), 1.0))


@pytest.mark.parametrize("case", ["bool-mask", "additive-mask", "causal", "gqa-causal", "no-mask"])
def test_eager_attention_equals_sdpa_when_nothing_is_dropped(case, monkeypatch):
    _keep_everything(monkeypatch)
    torch.manual_seed(0)
    heads, kv_heads = (6, 2) if case.startswith("gqa") else (4, 4)
    q = torch.randn(2, heads, 7, 8, requires_grad=True)
    k = torch.randn(2, kv_heads, 7, 8, requires_grad=True)
    v = torch.randn(2, kv_heads, 7, 8, requires_grad=True)
    mask, causal = None, case.endswith("causal")
    if case == "bool-mask":
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
        mask[0, :, :, 5:] = False  # padding keys
    elif case == "additive-mask":
        mask = torch.zeros(2, 1, 7, 7)
        mask[1, :, :, 4:] = torch.finfo(torch.float32).min
    ours = fd.attention_with_dropout(q, k, v, mask, 0.1, None, causal)
    ours.sum().backward()
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv_heads != heads)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for mine, stock in zip(ours_grads, [t.grad for t in (q, k, v)]):
        torch.testing.assert_close(mine, stock, rtol=1e-5, atol=1e-6)


def test_attention_dropout_drops_probabilities_with_the_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    torch.manual_seed(7)
    ours = fd.attention_with_dropout(q, k, v, None, 0.5, None, False)
    torch.manual_seed(7)
    keep, scale = fd.keep_mask((1, 2, 5, 5), 0.5)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 4**-0.5, dim=-1)
    torch.testing.assert_close(ours, (probs * keep * scale) @ v)


def _tiny_bert():
    model, tokenizer = load_model("tiny-bert", SEQ_CLS, num_labels=2)
    batch = tokenizer(["a short one", "a somewhat longer sentence than the first"], padding=True, return_tensors="pt")
    return model, batch


def test_the_switch_covers_dropout_modules_and_attention_and_undoes_itself():
    model, batch = _tiny_bert()
    before = model.config._attn_implementation
    assert before == "sdpa"
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    with fd.fast_dropout(model) as switched:
        assert switched == sum(1 for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0) > 0
        assert model.config._attn_implementation == "tunelab_fast_dropout+sdpa"
        with torch.no_grad():  # evaluation inside training: no dropout, the same logits
            torch.testing.assert_close(model(**batch).logits, reference)
        model.train()
        torch.manual_seed(0)
        first = model(**batch).logits
        torch.manual_seed(0)
        again = model(**batch).logits
        torch.manual_seed(1)
        other = model(**batch).logits
        assert torch.equal(first, again)  # repeatable under the Trainer's seed
        assert not torch.allclose(first, other)  # and it does drop
        first.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.config._attn_implementation == before
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference)


def test_inactive_switch_changes_nothing():
    model, _ = _tiny_bert()
    with fd.fast_dropout(model, active=False) as switched:
        assert switched == 0
        assert model.config._attn_implementation == "sdpa"
        assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("compile_,switch", [(False, True), (True, True), (False, False)],
                         ids=["eager", "compile", "train.fast_dropout=false"])
def test_the_engine_trains_through_the_fast_mask_eagerly_only(tmp_path, monkeypatch, compile_, switch):
    from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

    from tunelab.training import engine

    drawn = []
    real = fd.keep_mask
    monkeypatch.setattr(fd, "keep_mask", lambda shape, p: drawn.append(tuple(shape)) or real(shape, p))
    if compile_:  # compiled blocks keep torch's own dropout (no compile here: the switch alone is checked)
        monkeypatch.setattr(engine, "compiled_blocks", lambda model, active: fd.fast_dropout(model, False))
    data = write_rows(tmp_path / "cls.jsonl", SYNTHETIC_ROWS["classification"])
    cfg = tiny_config("classify", "lora", data, tmp_path / "runs", max_steps=2, compile=compile_, fast_dropout=switch)
    cfg.update(model="tiny-bert")
    engine.train(cfg, quiet=True)
    if compile_ or not switch:
        assert drawn == []
    else:
        assert any(len(shape) == 4 for shape in drawn)  # attention probabilities
        assert any(len(shape) == 3 for shape in drawn)  # the embeddings' and sub-layers' outputs


def test_a_model_without_attention_dropout_keeps_its_attention_implementation():
    from tunelab.models import CAUSAL_LM

    model, _ = load_model("tiny-llama", CAUSAL_LM)
    assert model.config.attention_dropout == 0.0
    before = model.config._attn_implementation
    with fd.fast_dropout(model):
        assert model.config._attn_implementation == before  # packed-row checks (can_pack) see the stock name


def test_train_fast_dropout_takes_a_boolean_and_names_a_bad_value():
    from tunelab.config import load_config
    from tunelab.core.errors import TunelabError

    base = {"model": "tiny-bert", "stage": "classify", "method": "lora", "data": {"train": "train.jsonl"}}
    assert load_config(base).train.fast_dropout is True
    assert load_config(base, ["train.fast_dropout=false"]).train.fast_dropout is False
    with pytest.raises(TunelabError) as info:
        load_config(base, ["train.fast_dropout=maybe"])
    assert "train.fast_dropout" in str(info.value) and "maybe" in str(info.value) and "\n" not in str(info.value)
