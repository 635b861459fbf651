"""Packing and the chunked LM loss: fixed-seed parity against plain reference computations."""
import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE
from tunelab.models import load_model
from tunelab.stages import _lm


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


def test_packed_logits_equal_unpacked_logits():
    model, _ = load_model("tiny-llama")
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


def test_padding_fraction_is_counted():
    collate = _lm.PadCollator(pad_token_id=0)
    collate(_examples([4, 8]))
    assert collate.stats()["padding_fraction"] == 0.25  # 12 real of 16 slots


def _plain_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def test_chunked_loss_matches_plain_loss_and_gradients(monkeypatch):
    monkeypatch.setattr(_lm, "LOSS_CHUNK", 7)  # force several chunks
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama")
    batch = _lm.PadCollator(pad_token_id=0)(_examples([20, 13, 9], vocab=model.config.vocab_size))

    reference = _plain_loss(model, batch)
    reference.backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    loss, _ = _lm.causal_lm_loss(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_loss_normalises_by_tokens_in_the_accumulated_batch():
    model, _ = load_model("tiny-llama")
    batch = _lm.PadCollator(pad_token_id=0)(_examples([10, 6], vocab=model.config.vocab_size))
    mean_loss, _ = _lm.causal_lm_loss(model, batch)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    summed_over_more, _ = _lm.causal_lm_loss(model, batch, num_items_in_batch=torch.tensor(2 * n))
    torch.testing.assert_close(summed_over_more, mean_loss / 2)
