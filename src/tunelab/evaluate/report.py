"""Reports of `tunelab eval`: the text table (test sets side by side) and confusion-matrix plots."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def plot_confusion(report: dict, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix, labels = np.array(report["confusion_matrix"]), report["labels"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _context_line(r: dict) -> str:
    """What a baseline put before its queries: demonstrations, or passages and how well they were found."""
    out = f", demonstrations/query {r['demos_per_query']:.2f}" if "demos_per_query" in r else ""
    if "passages_per_query" in r:
        out += f", passages/query {r['passages_per_query']:.2f}"
    recall = next((key for key in r if key.startswith("recall_at_")), None)
    if recall and "mrr" in r:
        out += f", recall@{recall.removeprefix('recall_at_')} {r[recall]:.3f}, MRR {r['mrr']:.3f}"
    return out


def format_report(result: dict) -> str:
    """The human-readable table: test sets side by side, then per-class scores and confusion matrices."""
    reports = result["data"]
    lines = [f"run: {result['run']}"]
    width = max(8, *(len(n) for n in reports))
    first = next(iter(reports.values()))
    if first["task"] != "classification":  # one row of numbers per test set, the stage's own metrics
        columns = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        lines.append(f"{'test set':<{width}} " + " ".join(f"{c:>{max(8, len(c))}}" for c in columns))
        for name, r in reports.items():
            cells = [f"{_num(r.get(c)) if isinstance(r.get(c), float) else r.get(c, '-'):>{max(8, len(c))}}" for c in columns]
            lines.append(f"{name:<{width}} " + " ".join(cells))
        extra = [f"{k}: {v}" for k, v in first.items() if isinstance(v, str) and k not in ("task", "file")]
        return "\n".join(lines + extra)
    binary = "positive" in first
    f1_name = f"F1({first['positive']})" if binary else "macro-F1"
    head = f"{'test set':<{width}} {'n':>6} {'accuracy':>9} {f1_name:>10} {'macro-F1':>9} {'micro-F1':>9}"
    lines.append(head + (f" {'ROC-AUC':>8} {'PR-AUC':>8}" if binary else ""))
    for name, r in reports.items():
        row = (f"{name:<{width}} {r['n']:>6} {_num(r['accuracy']):>9} {_num(r['f1']):>10} "
               f"{_num(r['macro']['f1']):>9} {_num(r['micro']['f1']):>9}")
        lines.append(row + (f" {_num(r['roc_auc']):>8} {_num(r['pr_auc']):>8}" if binary else ""))
    if binary and first.get("threshold") is not None:
        lines.append(f"decision: {first['positive']} when P({first['positive']}) >= {first['threshold']}")
    for name, r in reports.items():  # baselines: what each answer cost
        if "prompt_tokens_per_query" in r:
            lines.append(f"[{name}] prompt tokens/query {r['prompt_tokens_per_query']:.1f}, "
                         f"seconds/query {_num(r.get('score_seconds_per_query'))}{_context_line(r)}")
    for name, r in reports.items():
        labels = r["labels"]
        cell = max(7, *(len(label) for label in labels))
        lines.append(f"\n[{name}] {'label':<{cell}} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}")
        for label, s in r["per_class"].items():
            lines.append(f"{'':<{len(name) + 2}} {label:<{cell}} {s['precision']:>9.3f} {s['recall']:>7.3f} "
                         f"{s['f1']:>7.3f} {s['support']:>8}")
        lines.append(f"[{name}] confusion matrix (rows: true, columns: predicted)")
        lines.append(" " * (cell + 1) + " ".join(f"{label:>{cell}}" for label in labels))
        for label, counts in zip(labels, r["confusion_matrix"]):
            lines.append(f"{label:<{cell}} " + " ".join(f"{c:>{cell}}" for c in counts))
    return "\n".join(lines)
