"""recall@k and MRR against values worked out by hand."""
from __future__ import annotations

import pytest

from tunelab.core.metrics import mrr, recall_at_k

RANKED = [["a", "b", "c", "d"],   # gold "c": rank 3
          ["x", "y", "z", "w"],   # gold "q": never found
          ["m", "n", "o", "p"]]   # gold "m": rank 1
GOLD = ["c", "q", "m"]


@pytest.mark.parametrize("k, expected", [(1, 1 / 3), (2, 1 / 3), (3, 2 / 3), (4, 2 / 3), (10, 2 / 3)])
def test_recall_at_k_single_gold_is_the_hit_rate(k, expected):
    assert recall_at_k(RANKED, GOLD, k) == pytest.approx(expected)


def test_mrr_single_gold():
    assert mrr(RANKED, GOLD) == pytest.approx((1 / 3 + 0 + 1) / 3)  # = 4/9


def test_gold_sets_count_the_fraction_found():
    ranked = [["a", "b", "c"], ["d", "e", "f"]]
    gold = [{"b", "z"}, ["f", "d", "e", "y"]]  # set and list both mean "several relevant ids"
    # k=2: query 1 finds b of {b, z} -> 1/2; query 2 finds d, e of 4 -> 2/4
    assert recall_at_k(ranked, gold, 2) == pytest.approx((1 / 2 + 2 / 4) / 2)
    # k=3: 1/2 and 3/4
    assert recall_at_k(ranked, gold, 3) == pytest.approx((1 / 2 + 3 / 4) / 2)
    # first relevant: rank 2 (b) and rank 1 (d)
    assert mrr(ranked, gold) == pytest.approx((1 / 2 + 1) / 2)


def test_repeated_ids_count_once_and_tuples_are_single_ids():
    ranked = [["doc1", "doc1", "doc2"], [("d", 0), ("d", 1)]]  # chunks of one document repeat its id
    gold = [{"doc1", "doc2"}, ("d", 1)]
    assert recall_at_k(ranked, gold, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert recall_at_k(ranked, gold, 3) == pytest.approx(1.0)
    assert mrr(ranked, gold) == pytest.approx((1 + 1 / 2) / 2)


def test_integer_ids_and_empty_rankings():
    assert recall_at_k([[3, 1], []], [1, 2], 1) == 0.0
    assert recall_at_k([[3, 1], []], [1, 2], 2) == pytest.approx(0.5)
    assert mrr([[3, 1], []], [1, 2]) == pytest.approx(0.25)


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(RANKED, GOLD, 0)
    with pytest.raises(ValueError, match="3 ranked lists but 2 gold"):
        mrr(RANKED, GOLD[:2])
    with pytest.raises(ValueError, match="no relevant ids"):
        mrr([["a"]], [set()])
