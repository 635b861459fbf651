"""The comparison's recommendation, computed from its measured rows (never from a fixed template).

Every sentence is chosen by the numbers: which approach wins on the primary test set, the
cheapest trained approach that comes within 1% (else 5%) of full fine-tuning (or the winner),
how far in-context learning is behind and what it costs in prompt tokens, whether retrieval
changes the answer beyond the noise of the test set, and what fine-tuning cost in forgetting.
"""
from __future__ import annotations

import math


def _value(row: dict, test: str) -> float | None:
    return row["tests"].get(test, {}).get("value")


def _score(row: dict, test: str) -> float:
    """Higher is better, whatever the metric's direction."""
    value = _value(row, test)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    return -value if row["lower_is_better"] else value


def _ratio(row: dict, ref: dict, test: str) -> float:
    """row's metric as a share of ref's (1.0 = as good), direction-aware."""
    a, b = _value(row, test), _value(ref, test)
    if not a or not b:
        return 0.0
    return b / a if row["lower_is_better"] else a / b


def _noise(row: dict, test: str) -> float:
    """Two standard errors of a proportion-like metric on this test set's size (2% for perplexity-like)."""
    value, n = _value(row, test), row["tests"][test].get("n") or 1
    if row["lower_is_better"] or value is None or not 0.0 <= value <= 1.0:
        return abs(value or 0.0) * 0.02
    return 2 * math.sqrt(max(value * (1 - value), 0.25 / n) / n)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def recommend(rows: list[dict], test: str, source: str | None = None) -> list[str]:
    """Sentences, most important first, for the primary test set ``test``."""
    if not rows:
        return []
    metric = rows[0]["metric_name"]
    ranked = sorted(rows, key=lambda r: _score(r, test), reverse=True)
    best = ranked[0]
    trained = [r for r in ranked if r["kind"] == "train"]
    untrained = [r for r in ranked if r["kind"] != "train"]
    out = []
    if best["kind"] != "train":
        line = (f"Don't fine-tune for {test}: {best['name']} ({best['kind']}, no training) has the best {metric}, "
                f"{_fmt(_value(best, test))}")
        out.append(line + (f"; the best fine-tune, {trained[0]['name']}, has {_fmt(_value(trained[0], test))}."
                           if trained else "."))
    else:
        line = f"Fine-tune: {best['name']} has the best {metric} on {test}, {_fmt(_value(best, test))}"
        if untrained:
            gap = _score(best, test) - _score(untrained[0], test)
            line += f", {gap:.3f} better than the best approach without training ({untrained[0]['name']}, {_fmt(_value(untrained[0], test))})"
        out.append(line + ".")
    out += _efficiency(trained, best, test, metric)
    out += _icl(ranked, best, test, metric)
    out += _rag(ranked, test, metric)
    out += _forgetting(rows, source, metric)
    return out


def _efficiency(trained: list[dict], best: dict, test: str, metric: str) -> list[str]:
    if len(trained) < 2:
        return []
    full = next((r for r in trained if r["method"] == "full"), None)
    ref = full or trained[0]
    others = [r for r in trained if r is not ref and r["trainable_percent"] < ref["trainable_percent"]]
    for share in (0.99, 0.95):
        close = [r for r in others if _ratio(r, ref, test) >= share]
        if close:
            cheap = min(close, key=lambda r: (r["trainable_percent"], -_score(r, test)))
            time_ratio = cheap["train_seconds"] / ref["train_seconds"] if ref["train_seconds"] else float("nan")
            what = "full fine-tuning" if ref is full else ref["name"]
            return [f"{cheap['name']} reaches {100 * _ratio(cheap, ref, test):.0f}% of {what}'s {metric} "
                    f"({ref['name']}) with {cheap['trainable_percent']:.3g}% of the parameters in {time_ratio:.2f}× the time."]
    if others:
        top = max(others, key=lambda r: _score(r, test))
        return [f"No cheaper method comes within 5% of {ref['name']}'s {metric}: the closest, {top['name']}, "
                f"reaches {100 * _ratio(top, ref, test):.0f}%."]
    return []


def _icl(ranked: list[dict], best: dict, test: str, metric: str) -> list[str]:
    out = []
    zeroshot = next((r for r in ranked if r["kind"] == "zeroshot"), None)
    for row in (r for r in ranked if r["kind"] == "icl" and r is not best):
        gap = _score(best, test) - _score(row, test)
        line = f"In-context learning ({row['name']}) is {gap:.3f} {metric} behind {best['name']}"
        tokens = row["tests"][test].get("prompt_tokens")
        base_tokens = zeroshot["tests"][test].get("prompt_tokens") if zeroshot else None
        if tokens:
            line += f" and costs {tokens:.0f} prompt tokens per example"
            if base_tokens:
                line += f" ({tokens / base_tokens:.1f}× zero-shot's)"
        out.append(line + ".")
    return out


def _rag(ranked: list[dict], test: str, metric: str) -> list[str]:
    out = []
    plain = [r for r in ranked if r["kind"] == "zeroshot"]
    for row in (r for r in ranked if r["kind"] == "rag"):
        ref = next((r for r in plain if r["model"] == row["model"]), plain[0] if plain else None)
        if ref is None:
            continue
        delta, noise = _score(row, test) - _score(ref, test), _noise(ref, test)
        recall = next((v for k, v in row["tests"][test]["metrics"].items() if k.startswith("recall_at_")), None)
        because = f"; it finds the gold document for {recall:.0%} of queries" if recall is not None else ""
        if abs(delta) <= noise:
            out.append(f"Retrieval adds nothing here: {row['name']} has {metric} {_fmt(_value(row, test))} against "
                       f"{_fmt(_value(ref, test))} without it ({ref['name']}), within the ±{noise:.3f} noise of "
                       f"{ref['tests'][test].get('n')} test examples{because}.")
        else:
            verb = "adds" if delta > 0 else "costs"
            out.append(f"Retrieval {verb} {abs(delta):.3f} {metric} over {ref['name']} ({row['name']}: "
                       f"{_fmt(_value(row, test))}){because}.")
    return out


def _forgetting(rows: list[dict], source: str | None, metric: str) -> list[str]:
    out = []
    changed = [r for r in rows if r["kind"] == "train" and r.get("general_perplexity_change") is not None]
    if changed:
        parts = ", ".join(f"{r['name']} {100 * r['general_perplexity_change']:+.1f}%" for r in
                          sorted(changed, key=lambda r: r["general_perplexity_change"]))
        out.append(f"Forgetting (general-text perplexity change from the base model): {parts}.")
    kept = [r for r in rows if r.get("source_kept") is not None]
    if kept and source:
        most, least = max(kept, key=lambda r: r["source_kept"]), min(kept, key=lambda r: r["source_kept"])
        line = f"On the source domain ({source}), {most['name']} keeps {100 * most['source_kept']:.0f}% of its {metric}"
        if least is not most:
            line += f"; {least['name']} only {100 * least['source_kept']:.0f}%"
        out.append(line + ".")
    return out
