"""The fast evaluation paths give what the straightforward padded forward gives, and leave the run's model alone.

Straightforward = the run's model as loaded (peft adapter unmerged), padded batches in file order,
``model(input_ids, attention_mask).logits``. Fast = the adapter merged once on a copy
(``methods.inference``), sequences packed with per-example attention (decoders) or sorted into
token-budget batches (encoders) (``stages._scoring``). Tolerance: 1e-4 absolute on logits and
rewards (fp32; merged weights and per-row attention only change float rounding).

The copy is also cast to the machine's fastest dtype (bf16 on CPUs with AMX): the parity tests pin
that to fp32 (``fp32_copies``) so they check packing and merging at fp32 tolerance on every CPU, and
``test_a_bf16_machine_scores_with_a_bf16_copy`` checks the bf16 cast itself, on every CPU.
"""
from __future__ import annotations

import random

import pytest
import torch

from tunelab.data.collate import pad_right
from tunelab.methods import ia3, lora
from tunelab.methods.inference import inference_model
from tunelab.models.classifier import build_classifier
from tunelab.stages import _pairs, _scoring, reward

TOL = 1e-4


@pytest.fixture(autouse=True)
def fp32_copies(monkeypatch):
    from tunelab.methods import inference

    monkeypatch.setattr(inference, "fastest_dtype", lambda device: torch.float32)


def _sequences(tokenizer, n=9, seed=0, pad_inside=False):
    rng = random.Random(seed)
    vocab = [i for i in range(5, 400) if i != tokenizer.pad_token_id]
    seqs = [[rng.choice(vocab) for _ in range(rng.randint(1, 30))] for _ in range(n)]
    if pad_inside:  # a pad token inside and at the end: transformers pools the rightmost non-pad token
        seqs[0] = seqs[0] + [tokenizer.pad_token_id, 7, tokenizer.pad_token_id]
        seqs[1] = [tokenizer.pad_token_id] * 3
    return seqs


def _plain_logits(model, sequences, pad_id, batch=4):
    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch):
            ids, mask = pad_right(sequences[start:start + batch], pad_id)
            out.append(model(input_ids=ids, attention_mask=mask).logits.float())
    return torch.cat(out)


def _with_trained_lora(model, method="lora", seed=1):
    """A peft-wrapped classifier whose adapter is not the identity (LoRA's B starts at zero)."""
    model = lora.apply(model, lora.Config(r=4, alpha=8)) if method == "lora" else ia3.apply(model, ia3.Config())
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "ia3_" in name:
                param.add_(0.2 * torch.randn_like(param))
            elif param.requires_grad:  # the head
                param.normal_(0, 0.2)
    return model.eval()


def test_batches_cover_every_index_once_within_the_budget():
    lengths = [5, 1, 30, 7, 7, 12, 3, 30, 2]
    for batches, size in ((_scoring.sorted_batches(lengths, 30), lambda b: len(b) * max(lengths[i] for i in b)),
                          (_scoring.packed_rows(lengths, 30), lambda b: sum(lengths[i] for i in b))):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(size(b) <= 30 for b in batches)
    assert _scoring.packed_rows([40, 3], 30) == [[0], [1]]  # longer than the budget: alone


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-bert"])
def test_classifier_logits_equal_the_padded_forward(spec, tiny_tokenizer):
    torch.manual_seed(0)
    model, tokenizer = build_classifier(spec, ["a", "b", "c"], head_dropout=0.0)
    model.eval()
    sequences = _sequences(tokenizer, pad_inside=spec == "tiny-llama")
    expected = _plain_logits(model, sequences, tokenizer.pad_token_id)
    implementation = model.config._attn_implementation
    got = _scoring.classifier_logits(model, sequences, max_tokens=40, pad_id=tokenizer.pad_token_id)
    assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()
    assert model.config._attn_implementation == implementation  # packed attention switched off again
    if spec == "tiny-llama":
        assert _scoring.can_pack(model)  # the decoder really took the packed path


@pytest.mark.parametrize("spec,method", [("tiny-llama", "lora"), ("tiny-llama", "ia3"), ("tiny-bert", "lora")])
def test_merged_copy_scores_like_the_adapter_and_leaves_the_run_model_unchanged(spec, method):
    """tiny-bert: the copy's mean pooler must get the copy's attention mask (padding is left out)."""
    from peft import PeftModel

    torch.manual_seed(0)
    base, tokenizer = build_classifier(spec, ["reward"], head_dropout=0.0)
    model = _with_trained_lora(base, method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sequences = _sequences(tokenizer)
    expected = _plain_logits(model, sequences, tokenizer.pad_token_id)

    merged = inference_model(model)
    assert merged is not model and not isinstance(merged, PeftModel)
    got = _scoring.classifier_logits(merged, sequences, max_tokens=64, pad_id=tokenizer.pad_token_id)
    assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()

    assert isinstance(model, PeftModel)  # the run's model: still wrapped, same weights, same outputs
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_plain_logits(model, sequences, tokenizer.pad_token_id), expected)


def test_inference_model_is_cached_per_model_and_plain_models_are_not_copied():
    base, _ = build_classifier("tiny-llama", ["reward"], head_dropout=0.0)
    cache: dict = {}
    wrapped = _with_trained_lora(base)
    first = inference_model(wrapped, cache)
    assert inference_model(wrapped, cache) is first  # RLHF: one merge for every step
    plain, _ = build_classifier("tiny-llama", ["reward"])
    assert inference_model(plain) is plain  # nothing to merge, fp32 already the fastest here


def test_a_bf16_machine_scores_with_a_bf16_copy(monkeypatch):
    """Where bf16 is the faster dtype the copy is cast to it: logits within bf16 rounding, run model untouched."""
    from tunelab.methods import inference

    monkeypatch.setattr(inference, "fastest_dtype", lambda device: torch.bfloat16)
    torch.manual_seed(0)
    base, tokenizer = build_classifier("tiny-llama", ["reward"], head_dropout=0.0)
    model = _with_trained_lora(base)
    sequences = _sequences(tokenizer)
    expected = _plain_logits(model, sequences, tokenizer.pad_token_id)
    copy = inference_model(model)
    assert next(copy.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    got = _scoring.classifier_logits(copy, sequences, max_tokens=64, pad_id=tokenizer.pad_token_id)
    assert got.dtype == torch.float32
    assert 0 < (got - expected).abs().max() < 0.05 * expected.abs().max()  # bf16 really ran, and only rounding differs
    plain, _ = build_classifier("tiny-llama", ["reward"])
    assert inference_model(plain) is not plain  # a plain fp32 model is copied to be cast


class _Loaded:
    """What ``tunelab.load`` hands a stage: model, tokenizer, config, cache."""

    def __init__(self, model, tokenizer, max_length):
        from types import SimpleNamespace

        self.model, self.tokenizer, self.cache = model, tokenizer, {}
        self.config = SimpleNamespace(train=SimpleNamespace(max_length=max_length))


def test_reward_eval_equals_the_metered_pairwise_loss(tmp_path):
    from conftest import SYNTHETIC_ROWS, write_rows
    from tunelab.stages.base import EvalOptions

    torch.manual_seed(0)
    base, tokenizer = build_classifier("tiny-llama", reward.LABELS, head_dropout=0.0)
    model = _with_trained_lora(base)
    rows = SYNTHETIC_ROWS["preference"] + [{"prompt": "\n\nHuman: Tell me a longer story about " + t["prompt"] +
                                            "\n\nAssistant:", "chosen": t["chosen"] * 5, "rejected": "No."}
                                           for t in SYNTHETIC_ROWS["preference"]]
    file = write_rows(tmp_path / "pairs.jsonl", rows)
    loaded = _Loaded(model, tokenizer, max_length=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    report = reward.evaluate(loaded, "pairs", str(file), EvalOptions(batch_size=3))

    examples = reward.build_examples(tokenizer, rows, 64)  # the straightforward path: padded pair batches
    expected = _pairs.metered_eval(reward.PairwiseLoss(), model, examples, reward.PairCollator(tokenizer.pad_token_id), 3)
    assert report["pairwise_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert report["margin"] == pytest.approx(expected["margin"], abs=TOL)
    scores = reward.score(loaded, [r["prompt"] for r in rows], [r["chosen"] for r in rows], batch_size=2)
    plain = _plain_logits(model, [e["input_ids"] for e in examples], tokenizer.pad_token_id)[:, 0]
    assert torch.allclose(torch.tensor(scores), plain, atol=TOL)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_summed_nll_packed_and_merged_equals_padded_batches_of_the_adapter():
    from types import SimpleNamespace

    from conftest import SYNTHETIC_ROWS
    from tunelab.data.tokenize import encode_chat
    from tunelab.stages import _lm

    base, tokenizer = _lm.build_lm(SimpleNamespace(model="tiny-llama"))
    model = _with_trained_lora(base)
    examples = [encode_chat(tokenizer, row["messages"] * (1 + i % 3), 64) for i, row in
                enumerate(SYNTHETIC_ROWS["openai"])]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    total, tokens = _lm.summed_nll(model, tokenizer, examples, batch_size=3)

    collate, expected, count = _lm.PadCollator(tokenizer.pad_token_id), 0.0, 0  # file order, padded, unmerged
    with torch.no_grad():
        for start in range(0, len(examples), 3):
            batch = collate(examples[start:start + 3])
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss, _ = _lm.causal_lm_loss(model, batch, num_items_in_batch=n)
            expected, count = expected + float(loss) * n, count + n
    assert tokens == count
    assert total == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
