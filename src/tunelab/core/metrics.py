"""Classification metrics, written out in numpy (tests check them against scikit-learn), and
retrieval metrics (recall@k, MRR) over ranked id lists.

Conventions follow scikit-learn: a ratio with a zero denominator is 0; the confusion matrix
has true labels as rows and predictions as columns; average precision is the step-wise
sum over thresholds, AP = sum_n (R_n - R_{n-1}) P_n, without interpolation.
"""
from __future__ import annotations

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def roc_auc(y_binary, scores) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties counting 1/2."""
    y, s = np.asarray(y_binary).astype(bool), np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_scores = s[order]
    start = 0
    while start < len(s):  # average ranks over ties (Mann-Whitney U)
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(y_binary, scores) -> float:
    """Area under the precision-recall curve as scikit-learn's average_precision_score defines it."""
    y, s = np.asarray(y_binary).astype(bool), np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_each_threshold = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_each_threshold]
    fp = (last_of_each_threshold + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def decide(probs: np.ndarray, positive: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Predicted class per row: argmax, or for a binary task `positive` iff P(positive) >= threshold."""
    if threshold is None:
        return probs.argmax(axis=1)
    negative = 1 - positive
    return np.where(probs[:, positive] >= threshold, positive, negative)


def classification_report(labels: list[str], y_true, probs, positive: int | None = None,
                          threshold: float | None = None) -> dict:
    """Everything `tunelab eval` reports for one test set, as plain JSON-able values."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    binary = len(labels) == 2
    if binary and positive is None:
        positive = 1
    y_pred = decide(probs, positive if binary else None, threshold if binary else None)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    per_class = precision_recall_f1(matrix)
    tp, total = int(np.trace(matrix)), int(matrix.sum())
    report = {
        "n": total,
        "labels": list(labels),
        "accuracy": tp / total if total else 0.0,
        "per_class": {label: {key: float(per_class[key][i]) if key != "support" else int(per_class[key][i])
                              for key in ("precision", "recall", "f1", "support")}
                      for i, label in enumerate(labels)},
        "macro": {key: float(per_class[key].mean()) for key in ("precision", "recall", "f1")},  # over all labels
        "micro": {key: tp / total if total else 0.0 for key in ("precision", "recall", "f1")},  # single-label: = accuracy
        "confusion_matrix": matrix.tolist(),
    }
    if binary:
        is_positive = y_true == positive
        report.update({
            "positive": labels[positive],
            "threshold": threshold,
            "f1": report["per_class"][labels[positive]]["f1"],
            "roc_auc": roc_auc(is_positive, probs[:, positive]),
            "pr_auc": average_precision(is_positive, probs[:, positive]),
        })
    else:
        report["f1"] = report["macro"]["f1"]
    return report


# --------------------------------------------------------------------------- retrieval


def _gold_sets(ranked_ids: list[list], gold: list) -> list[set]:
    """Each query's relevant ids as a set: a set, frozenset or list holds several; anything else
    (a string, a number, a tuple such as (doc, chunk)) is one id."""
    if len(ranked_ids) != len(gold):
        raise ValueError(f"{len(ranked_ids)} ranked lists but {len(gold)} gold entries")
    sets = [set(g) if isinstance(g, (set, frozenset, list)) else {g} for g in gold]
    if any(not s for s in sets):
        raise ValueError("a query has no relevant ids")
    return sets


def recall_at_k(ranked_ids: list[list], gold: list, k: int) -> float:
    """Mean over queries of |relevant ids among the first k| / |relevant ids|. With one relevant id
    per query this is the hit rate: the fraction of queries that find it in their top k. A ranked
    list may repeat an id (several chunks of one document): it counts once."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    sets = _gold_sets(ranked_ids, gold)
    if not sets:
        return 0.0
    return sum(len(relevant & set(ranked[:k])) / len(relevant) for ranked, relevant in zip(ranked_ids, sets)) / len(sets)


def mrr(ranked_ids: list[list], gold: list) -> float:
    """Mean reciprocal rank: mean over queries of 1 / (rank of the first relevant id, from 1); 0 for
    a query whose list holds none."""
    sets = _gold_sets(ranked_ids, gold)
    if not sets:
        return 0.0
    total = 0.0
    for ranked, relevant in zip(ranked_ids, sets):
        total += next((1.0 / rank for rank, item in enumerate(ranked, start=1) if item in relevant), 0.0)
    return total / len(sets)
