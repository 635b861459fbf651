"""Answer quality (stages/_answers): the answer perplexity baselines and sft runs share, ROUGE-L, generation.

Every dataset here is SYNTHETIC (conftest's made-up colour facts). tiny-llama is random: its
numbers only have to agree with each other, not to be good.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import SYNTHETIC_ROWS, write_rows
from tunelab.stages._answers import final_prompts, generate_replies, prompt_ids, rouge_l
from tunelab.stages.base import EvalOptions


@pytest.fixture(scope="module")
def tiny():
    from tunelab.models import load_model

    model, tokenizer = load_model("tiny-llama")
    return model.eval(), tokenizer


def test_answer_perplexity_without_context_is_evaluate_lms_loss(tiny, tmp_path):
    """Zero-shot generation (no context) scores the reference replies exactly as the sft stage does."""
    from tunelab.baselines.zeroshot import ZeroShotAnswerer, ZeroShotConfig
    from tunelab.stages._lm import evaluate_lm

    model, tokenizer = tiny
    for dialect in ("dolly", "openai"):
        data = write_rows(tmp_path / f"{dialect}.jsonl", SYNTHETIC_ROWS[dialect])
        options = EvalOptions(batch_size=3)
        as_run = SimpleNamespace(model=model, tokenizer=tokenizer, config=SimpleNamespace(train=SimpleNamespace(
            max_length=2048)))
        lm = evaluate_lm(as_run, "d", str(data), options)
        answers = ZeroShotAnswerer(ZeroShotConfig(model="tiny-llama"), model, tokenizer).evaluate("d", str(data), options)
        assert answers["tokens"] == lm["tokens"] and answers["n"] == lm["n"] == 8
        assert answers["loss"] == pytest.approx(lm["loss"], rel=1e-5)
        assert answers["perplexity"] == pytest.approx(lm["perplexity"], rel=1e-4)


def test_sft_eval_with_generate_adds_rouge_and_keeps_the_loss(trained_run, tmp_path):
    from tunelab.evaluate import evaluate

    run = trained_run("sft", "lora")
    data = write_rows(tmp_path / "d.jsonl", SYNTHETIC_ROWS["dolly"])
    plain = evaluate(run, {"d": str(data)}, write=False)["data"]["d"]
    generated = evaluate(run, {"d": str(data)}, generate=3, max_new_tokens=5, write=False)["data"]["d"]
    assert generated["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert generated["generated"] == 3 and 0.0 <= generated["rouge_l"] <= 1.0 and len(generated["samples"]) == 3
    assert generated["prompt_tokens_per_query"] > 0 and generated["generate_seconds_per_query"] > 0
    assert "rouge_l" not in plain


def test_rouge_l_matches_a_hand_computed_value():
    # Longest common subsequences, counted by hand on lower-cased, Porter-stemmed words:
    #   "the cat is on the mat" vs "the cat sat on the mat": the cat on the mat = 5 of 6 and 6 -> F = 5/6
    #   "the quick brown fox jumps" vs "a quick brown fox": quick brown fox = 3; P = 3/4, R = 3/5 -> F = 2/3
    #   "dogs running" vs "dog runs": stems dog, run on both sides -> F = 1
    references = ["the cat is on the mat", "the quick brown fox jumps", "dogs running"]
    predictions = ["the cat sat on the mat", "a quick brown fox", "dog runs"]
    assert rouge_l(predictions, references) == pytest.approx((5 / 6 + 2 / 3 + 1.0) / 3)
    assert rouge_l(["nothing alike"], ["the sky is blue"]) == 0.0


def test_batched_left_padded_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    rows = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]}
            for text in ("Hi", "What colour is a ripe banana on a sunny day?", "Name a colour.")]
    prompts = [prompt_ids(tokenizer, chat) for chat in final_prompts(rows)]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is padded
    batched = generate_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    alone = [generate_replies(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == alone
