"""The recommendation follows the figures: change the numbers and the advice changes with them."""
from __future__ import annotations

from tunelab.comparison.recommend import recommend


def _row(name, kind, value, method=None, percent=0.0, seconds=0.0, n=200, model="m", **extra):
    row = {"name": name, "kind": kind, "method": method, "model": model, "trainable_percent": percent,
           "train_seconds": seconds, "metric_name": "f1", "lower_is_better": False,
           "tests": {"sms": {"value": value, "n": n, "metrics": extra.pop("metrics", {}),
                             "prompt_tokens": extra.pop("tokens", None)}}}
    row.update(extra)
    return row


def _rows(full=0.90, lora=0.895, icl=0.60, rag=0.42, zero=0.40):
    return [_row("zero-shot", "zeroshot", zero, tokens=50), _row("icl-4", "icl", icl, tokens=400),
            _row("rag-3", "rag", rag, metrics={"recall_at_3": 0.35}),
            _row("full", "train", full, method="full", percent=100.0, seconds=100.0),
            _row("lora", "train", lora, method="lora", percent=1.5, seconds=40.0),
            _row("head", "train", 0.70, method="head", percent=0.01, seconds=5.0)]


def test_fine_tuning_wins_and_the_cheap_method_within_one_percent_is_named():
    text = recommend(_rows(), "sms")
    assert text[0].startswith("Fine-tune: full has the best f1 on sms, 0.900, 0.300 better than")
    assert "lora reaches 99% of full fine-tuning's f1 (full) with 1.5% of the parameters in 0.40× the time." in text
    assert any(s.startswith("In-context learning (icl-4) is 0.300 f1 behind full and costs 400 prompt tokens "
                            "per example (8.0× zero-shot's)") for s in text)
    rag = next(s for s in text if s.startswith("Retrieval"))
    assert rag.startswith("Retrieval adds nothing here") and "35% of queries" in rag


def test_when_prompting_is_best_the_advice_is_not_to_fine_tune():
    text = recommend(_rows(icl=0.95), "sms")
    assert text[0].startswith("Don't fine-tune for sms: icl-4 (icl, no training) has the best f1, 0.950")
    assert not any(s.startswith("In-context learning") for s in text)  # it is the winner, not behind


def test_efficiency_and_retrieval_sentences_follow_the_gaps():
    text = recommend(_rows(lora=0.80, rag=0.60), "sms")
    assert not any("reaches 99%" in s for s in text)
    assert any(s.startswith("No cheaper method comes within 5% of full's f1") for s in text)
    assert any(s.startswith("Retrieval adds 0.200 f1 over zero-shot") for s in text)
    text = recommend(_rows(lora=0.87), "sms")  # within 5%, not 1%
    assert any(s.startswith("lora reaches 97% of full fine-tuning's f1") for s in text)


def test_lower_is_better_metrics_rank_the_other_way():
    rows = _rows(full=8.0, lora=8.05, icl=20.0, rag=30.0, zero=30.0)
    for row in rows:
        row["lower_is_better"], row["metric_name"] = True, "perplexity"
    rows[-1]["tests"]["sms"]["value"] = 12.0
    text = recommend(rows, "sms")
    assert text[0].startswith("Fine-tune: full has the best perplexity on sms, 8.000")
    assert any(s.startswith("lora reaches 99% of full fine-tuning's perplexity") for s in text)


def test_forgetting_and_kept_source_metric_are_reported_from_the_rows():
    rows = _rows()
    rows[3].update(general_perplexity_change=0.40, source_kept=0.45)
    rows[4].update(general_perplexity_change=0.10, source_kept=0.92)
    text = recommend(rows, "sms", source="email")
    assert "Forgetting (general-text perplexity change from the base model): lora +10.0%, full +40.0%." in text
    assert "On the source domain (email), lora keeps 92% of its f1; full only 45%." in text
