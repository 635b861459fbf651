"""tunelab.metrics against scikit-learn on fixed arrays (seeded, with ties and empty classes)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from tunelab.core import metrics


def _arrays(seed: int, n: int = 200, classes: int = 3):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, classes, n))
    scores = np.round(rng.random(n) + 0.5 * (y_true == 1), 1)  # rounded: many ties
    return y_true, y_pred, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_per_class_match_sklearn(seed):
    y_true, y_pred, _ = _arrays(seed)
    matrix = metrics.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(matrix, sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]))
    ours = metrics.precision_recall_f1(matrix)
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    np.testing.assert_array_equal(ours["support"], s)


def test_class_never_predicted_or_absent_follows_zero_division_0():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 0, 0])  # class 1 never predicted, class 2 absent everywhere
    ours = metrics.precision_recall_f1(metrics.confusion_matrix(y_true, y_pred, 3))
    p, r, f, _ = sk.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_roc_auc_and_average_precision_match_sklearn(seed):
    y_true, _, scores = _arrays(seed)
    positive = y_true == 1
    assert metrics.roc_auc(positive, scores) == pytest.approx(sk.roc_auc_score(positive, scores), abs=1e-12)
    assert metrics.average_precision(positive, scores) == pytest.approx(
        sk.average_precision_score(positive, scores), abs=1e-12)


def test_auc_undefined_with_one_class():
    assert np.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert np.isnan(metrics.average_precision([0, 0], [0.1, 0.5]))


def test_report_averages_match_sklearn_multiclass():
    y_true, y_pred, _ = _arrays(5)
    probs = np.eye(3)[y_pred] * 0.8 + 0.2 / 3  # argmax reproduces y_pred
    report = metrics.classification_report(["a", "b", "c"], y_true, probs)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    for average in ("macro", "micro"):
        assert report[average]["f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average=average))
        assert report[average]["precision"] == pytest.approx(sk.precision_score(y_true, y_pred, average=average))
        assert report[average]["recall"] == pytest.approx(sk.recall_score(y_true, y_pred, average=average))
    assert report["f1"] == report["macro"]["f1"]  # multi-class headline F1 is macro
    assert "roc_auc" not in report


def test_binary_report_threshold_and_positive_class_by_hand():
    # labels [ham, spam]; P(spam) per row; spam is the positive class (index 1).
    labels = ["ham", "spam"]
    y_true = np.array([0, 0, 0, 1, 1, 1])
    p_spam = np.array([0.1, 0.4, 0.6, 0.3, 0.7, 0.9])
    probs = np.stack([1 - p_spam, p_spam], axis=1)

    default = metrics.classification_report(labels, y_true, probs)  # argmax == threshold 0.5
    # predicted spam: rows 2, 4, 5 -> TP 2, FP 1, FN 1
    assert default["per_class"]["spam"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                            "f1": pytest.approx(2 / 3), "support": 3}
    assert default["confusion_matrix"] == [[2, 1], [1, 2]]
    assert default["positive"] == "spam" and default["f1"] == pytest.approx(2 / 3)

    low = metrics.classification_report(labels, y_true, probs, positive=1, threshold=0.25)
    # predicted spam: every row but 0 -> TP 3, FP 2
    assert low["confusion_matrix"] == [[1, 2], [0, 3]]
    assert low["per_class"]["spam"]["recall"] == 1.0
    assert low["per_class"]["spam"]["precision"] == pytest.approx(3 / 5)
    assert low["threshold"] == 0.25
    # AUCs do not depend on the threshold; 7 of 9 (pos, neg) pairs are ordered right (0.3 < 0.4, 0.6).
    assert low["roc_auc"] == default["roc_auc"] == pytest.approx(7 / 9)

    as_ham = metrics.classification_report(labels, y_true, probs, positive=0)
    assert as_ham["positive"] == "ham" and as_ham["f1"] == as_ham["per_class"]["ham"]["f1"]
    assert as_ham["roc_auc"] == pytest.approx(7 / 9)  # symmetric for the other class
