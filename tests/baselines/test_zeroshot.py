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
