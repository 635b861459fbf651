"""Packing and the chunked LM loss: fixed-seed parity against plain reference computations."""
import pytest
import torch
import torch.nn.functional as F

from tunelab.models import packed_attention

from tunelab.data.tokenize import IGNORE
from tunelab.models import load_model
from tunelab.stages import _head_loss, _lm


def _examples(lengths, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        labels = [IGNORE] * (n // 3) + ids[n // 3 :]  # a prompt part without loss, like SFT
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_best_fit_decreasing_packs_within_capacity_and_keeps_every_token():
    examples = _examples([9, 7, 6, 5, 4, 3, 2, 2])
    packed = _lm.pack_examples(examples, max_length=10)
    assert all(len(row["input_ids"]) <= 10 for row in packed)
    assert sum(len(r["input_ids"]) for r in packed) == sum(len(e["input_ids"]) for e in examples)
    assert len(packed) == 4  # 38 tokens into rows of 10: BFD reaches the optimum here
    for row in packed:  # positions restart at 0 for each example; each example's first label masked
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][i] == IGNORE for i in starts)


@pytest.mark.parametrize("attention", ["sdpa", packed_attention.NAME])
def test_packed_logits_equal_unpacked_logits(attention):
    packed_attention.register()
    model, _ = load_model("tiny-llama")
    model.set_attn_implementation(attention)
    model.eval()
    examples = _examples([12, 7, 5], vocab=model.config.vocab_size)
    packed = _lm.pack_examples(examples, max_length=32)
    assert len(packed) == 1
    batch = _lm.PadCollator(pad_token_id=0)(packed)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              use_cache=False).logits[0]
        offset = 0
        order = [len(e["input_ids"]) for e in examples]
        # packing sorted by length (12, 7, 5): the same order as given
        for example, n in zip(examples, order):
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            torch.testing.assert_close(packed_logits[offset : offset + n], alone, atol=1e-4, rtol=1e-4)
            offset += n


def test_per_example_attention_matches_the_block_mask_in_logits_and_gradients():
    """Two packed rows of different layouts, the shorter padded: same loss and grads as stock SDPA."""
    packed_attention.register()
    rows = _lm.pack_examples(_examples([14, 11, 9, 6, 5, 3], vocab=500), max_length=24)
    assert len(rows) >= 2 and len({len(r["input_ids"]) for r in rows}) > 1
    batch = _lm.PadCollator(pad_token_id=0)(rows)
    results = {}
    for attention in ("sdpa", packed_attention.NAME):
        model, _ = load_model("tiny-llama")
        model.set_attn_implementation(attention)
        loss, outputs = _lm.causal_lm_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[attention] = (outputs.logits.detach(), loss.detach(), grads)
    (h0, l0, g0), (h1, l1, g1) = results.values()
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l0)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)


def test_sft_models_train_with_per_example_attention(tmp_path, monkeypatch, synthetic_data):
    """A real (in-process) packed SFT run: the training forwards go through the per-example
    attention, split at exactly the boundaries of the examples packed into each row."""
    from conftest import tiny_config
    from tunelab.config import load_config
    from tunelab.models import load_tokenizer
    from tunelab.stages import sft
    from tunelab.training import engine

    cfg = tiny_config("sft", "lora", synthetic_data("dolly"), tmp_path / "runs", max_steps=2, max_length=256)
    model, _ = sft.build_model(load_config(cfg))
    assert model.config._attn_implementation == packed_attention.NAME
    train_rows, _ = sft.build_datasets(load_config(cfg), load_tokenizer("tiny-llama"))
    packed_layouts = {_example_lengths(row["position_ids"]) for row in train_rows}
    assert any(len(lengths) > 1 for lengths in packed_layouts), "the test data no longer packs"

    seen, plain = [], packed_attention.packed_sdpa_forward

    def recording(module, query, key, value, attention_mask, *args, **kwargs):
        if torch.is_grad_enabled() and attention_mask is None:
            seen.append(kwargs["position_ids"].clone())
        return plain(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "packed_sdpa_forward", recording)
    packed_attention.register()  # the attention registry now holds the recording forward
    try:
        engine.train(cfg, quiet=True)
    finally:
        monkeypatch.undo()
        packed_attention.register()
    assert seen, "no training forward went through the per-example attention"
    split = []
    for row in (row for positions in seen for row in positions):
        lengths = tuple(end - start for start, end in packed_attention._segments(row[None])[0])
        # a row shorter than the batch is padded: its padding is one more (ignored) segment
        assert lengths in packed_layouts or lengths[:-1] in packed_layouts, (lengths, packed_layouts)
        split.append(len(lengths) > 1)
    assert any(split), "no training row was attended per example"


def _example_lengths(position_ids) -> tuple:
    """Lengths of the examples packed into a row (positions restart at 0 for each)."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return tuple(b - a for a, b in zip(starts, starts[1:]))


def test_padding_fraction_is_counted():
    collate = _lm.PadCollator(pad_token_id=0)
    collate(_examples([4, 8]))
    assert collate.stats()["padding_fraction"] == 0.25  # 12 real of 16 slots
    assert collate.stats()["loss_tokens"] == 3 + 6  # the first third of each example carries no loss
    collate.reset()
    assert collate.stats() == {"padding_fraction": 0.0, "batched_tokens": 0, "loss_tokens": 0}


def _plain_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE)


@pytest.mark.parametrize("head_slice", [128, 5])  # the head's rows in one slice; in several
def test_chunked_loss_matches_plain_loss_and_gradients(monkeypatch, head_slice):
    """The tied tiny-llama trains every weight: the head's own gradient (summed over slices in fp32)
    and the tied embedding's add up to the plain full-logits loss's."""
    monkeypatch.setattr(_head_loss, "HEAD_SLICE", head_slice)
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama")
    batch = _lm.PadCollator(pad_token_id=0)(_examples([20, 13, 9], vocab=model.config.vocab_size))

    reference = _plain_loss(model, batch)
    reference.backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    rows = []  # the head node's row count
    fused = _head_loss._head_cross_entropy()

    class Spy:
        @staticmethod
        def apply(h, w, t, autocast):
            rows.append(h.size(0))
            return fused.apply(h, w, t, autocast)

    monkeypatch.setattr(_head_loss, "_head_cross_entropy", lambda: Spy)
    loss, _ = _lm.causal_lm_loss(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # one node; its matmuls come in few shapes: padded with ignored rows to a multiple of HEAD_MULTIPLE
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert len(rows) == 1 and rows[0] % _head_loss.HEAD_MULTIPLE == 0 and 0 <= rows[0] - n < _head_loss.HEAD_MULTIPLE, (rows, n)


def test_packed_rows_are_padded_to_a_multiple_of_the_row_width_as_a_segment_of_their_own():
    rows = _lm.pack_examples(_examples([70, 9, 5]), max_length=80)  # rows of 79 and 5 tokens
    batch = _lm.PadCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape[1] == 2 * _lm.ROW_MULTIPLE  # 79 -> 128
    for row, n in zip(batch["position_ids"].tolist(), (79, 5)):
        assert row[n:] == list(range(len(row) - n))  # the padding starts a segment of its own
    assert (batch["labels"][:, 79:] == IGNORE).all()
    from tunelab.training.trainer import _packed_real_tokens

    assert _packed_real_tokens(batch["input_ids"], batch["position_ids"], 0) == 79 + 5  # the run's token count


def test_loss_normalises_by_tokens_in_the_accumulated_batch():
    model, _ = load_model("tiny-llama")
    batch = _lm.PadCollator(pad_token_id=0)(_examples([10, 6], vocab=model.config.vocab_size))
    mean_loss, _ = _lm.causal_lm_loss(model, batch)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    summed_over_more, _ = _lm.causal_lm_loss(model, batch, num_items_in_batch=torch.tensor(2 * n))
    torch.testing.assert_close(summed_over_more, mean_loss / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_slice", [3, 5, 128])
@pytest.mark.parametrize("matmul_rows", [512, 8])
def test_the_fused_head_loss_of_a_frozen_head_matches_cross_entropy(monkeypatch, dtype, head_slice, matmul_rows):
    """LoRA's case: the head is frozen (maybe bf16), only the hidden states need a gradient, formed in
    forward a slice of rows at a time (several slices, a last one shorter, or one), a bf16 head's
    matmuls over groups of rows (one group; several, with slices that do not divide them). Reference:
    full logits and stock cross-entropy."""
    monkeypatch.setattr(_head_loss, "HEAD_SLICE", head_slice)
    monkeypatch.setattr(_head_loss, "HEAD_MATMUL_ROWS", matmul_rows)
    torch.manual_seed(0)
    weight = torch.randn(50, 16).to(dtype)
    targets = torch.randint(0, 50, (21,))
    targets[[3, 10]] = _lm.IGNORE
    hidden = torch.randn(21, 16, requires_grad=True)
    ref_hidden = hidden.detach().clone().requires_grad_()
    reference = F.cross_entropy((ref_hidden.to(dtype) @ weight.t()).float(), targets, reduction="sum")
    (2 * reference).backward()
    loss = _head_loss.chunked_lm_loss_sum(hidden, weight, targets)
    (2 * loss).backward()
    tol = dict(atol=1e-4, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(loss, reference, **tol)
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, **tol)
    with torch.no_grad():  # evaluation: the loss alone, the same value
        torch.testing.assert_close(_head_loss.chunked_lm_loss_sum(hidden, weight, targets), reference.detach(), **tol)


@pytest.mark.parametrize("head_slice", [3, 128])
def test_a_trained_fp32_head_under_bf16_autocast_computes_in_bf16_like_the_stock_linear(monkeypatch, head_slice):
    """Full fine-tuning under bf16 mixed precision: the head's weight is fp32, and its matmuls run in
    bf16 as autocast runs the stock ``nn.Linear`` (they ran in fp32, ~4x slower on a CPU with bf16
    units). Loss, the hidden states' and the head's gradients match the stock autocast path."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm_, torch.ops.aten.addmm):
                self.seen.add(args[-1].dtype if func.overloadpacket is torch.ops.aten.mm else args[1].dtype)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(_head_loss, "HEAD_SLICE", head_slice)
    torch.manual_seed(0)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (21,))
    targets[[3, 10]] = _lm.IGNORE
    hidden = torch.randn(21, 16, requires_grad=True)
    ref_weight, ref_hidden = (t.detach().clone().requires_grad_() for t in (weight, hidden))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(F.linear(ref_hidden, ref_weight).float(), targets, reduction="sum")
        with MatmulDtypes() as seen:
            loss = _head_loss.chunked_lm_loss_sum(hidden, weight, targets)
    (2 * reference).backward()
    (2 * loss).backward()
    assert seen.seen == {torch.bfloat16}
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    tol = dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(loss, reference, **tol)
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, **tol)
    torch.testing.assert_close(weight.grad, ref_weight.grad, **tol)


def test_the_head_computes_in_the_autocast_dtype_the_models_forward_ran_under(monkeypatch):
    """Mixed precision wraps the model's forward alone in autocast (accelerate does), so the loss after it
    runs outside autocast: the head still computes in bf16, learned from the forward, and the full
    fine-tuning gradients match the stock full-logits loss under the same wrapping."""
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama")
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    batch = _lm.PadCollator(pad_token_id=0)(_examples([20, 13, 9], vocab=model.config.vocab_size))
    reference = _plain_loss(model, batch)
    reference.backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    dtypes = []
    fused = _head_loss._head_cross_entropy()

    class Spy:
        @staticmethod
        def apply(h, w, t, autocast):
            dtypes.append((w.dtype, autocast))
            return fused.apply(h, w, t, autocast)

    monkeypatch.setattr(_head_loss, "_head_cross_entropy", lambda: Spy)
    loss, _ = _lm.causal_lm_loss(model, batch)
    loss.backward()
    assert dtypes == [(torch.float32, torch.bfloat16)]
    torch.testing.assert_close(loss, reference, atol=2e-2, rtol=1e-2)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference_grads[name], atol=2e-2, rtol=5e-2, msg=name)
    model.forward = type(model).forward.__get__(model)  # no autocast: the head's own dtype again
    dtypes.clear()
    _lm.causal_lm_loss(model, batch)
    assert dtypes == [(torch.float32, None)]
