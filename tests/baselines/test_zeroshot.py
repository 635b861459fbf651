"""The label-word scorer zero-shot and ICL share: its fast paths score exactly what the plain one does.

The texts are SYNTHETIC; tiny-llama is random (the probabilities mean nothing, they must only agree).
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from tunelab.baselines.zeroshot import ZeroShotClassifier, ZeroShotConfig

TEXTS = ["hello there friend", "win cash now", "a much longer message about the weather we had today"]


@pytest.mark.parametrize("words", [{"ham": "no", "spam": "yes"}, {"ham": "not spam at all"}])
def test_projecting_only_the_answer_positions_changes_nothing(words):
    from tunelab.models import load_model

    model, tokenizer = load_model("tiny-llama")
    classifier = ZeroShotClassifier(ZeroShotConfig(model="tiny-llama", labels=["ham", "spam"], label_words=words),
                                    model, tokenizer)
    kept = classifier.predict_proba(TEXTS, batch_size=2)  # logits_to_keep: (B, answer positions, V) only
    with mock.patch("tunelab.stages._reference._accepts_logits_to_keep", return_value=False):
        full = classifier.predict_proba(TEXTS, batch_size=2)  # every position's logits, then picked
    torch.testing.assert_close(kept, full, atol=1e-6, rtol=1e-6)
    assert classifier.stats.queries == 2 * len(TEXTS) and classifier.stats.seconds > 0


@pytest.mark.parametrize("words", [{}, {"ham": "normal message", "spam": "junk mail"}])
def test_packed_label_scores_equal_padded_batches(monkeypatch, words):
    """The batch packed into one row (per-example attention, no padding) scores as the padded batch does."""
    from tunelab.models import load_model
    from tunelab.stages import _scoring

    model, tokenizer = load_model("tiny-llama")
    classifier = ZeroShotClassifier(ZeroShotConfig(model="tiny-llama", labels=["ham", "spam"], label_words=words),
                                    model, tokenizer)
    texts = ["win a prize now", "lunch at noon?", "a much longer message about the quarterly report and the budget",
             "hi", "call me"]
    assert _scoring.can_pack(model)
    packed = classifier.predict_proba(texts, batch_size=3)
    monkeypatch.setattr(_scoring, "can_pack", lambda m: False)
    padded = classifier.predict_proba(texts, batch_size=3)
    assert torch.allclose(packed, padded, atol=1e-5), (packed - padded).abs().max()
