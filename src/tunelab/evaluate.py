"""`tunelab eval`: score a finished run on named test files, side by side.

Classification runs (trained or zero-shot) get accuracy, per-class precision/recall/F1, macro and
micro averages, a confusion matrix (JSON, text and PNG) and, for two labels, ROC-AUC and PR-AUC;
causal-LM runs get loss and perplexity. Each test set's report goes to ``RUN/eval/<name>.json``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .errors import TunelabError
from .metrics import classification_report

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_data_args(items: list[str]) -> dict[str, str]:
    """``NAME=FILE`` (or a bare ``FILE``, named after its stem) -> {name: file}, names unique."""
    data: dict[str, str] = {}
    for item in items:
        name, file = item.split("=", 1) if "=" in item else (Path(item).stem, item)
        if not _NAME.match(name):
            raise TunelabError(f"--data {item}: the name '{name}' may use only letters, digits, '_', '-' and '.'")
        if name in data:
            raise TunelabError(f"--data: the name '{name}' is given twice")
        data[name] = file
    if not data:
        raise TunelabError("give at least one test set: --data NAME=FILE")
    return data


class _Classifier:
    """labels + predict_proba(texts) for a trained classify run or a zero-shot baseline."""

    def __init__(self, run_dir: Path, batch_size: int):
        from .zeroshot import is_zeroshot_run, load_run

        if is_zeroshot_run(run_dir):
            zeroshot = load_run(run_dir)
            self.labels = zeroshot.cfg.labels
            self.predict = lambda texts: zeroshot.predict_proba(texts, batch_size)
            return
        from .classifier import predict_proba
        from .inference import load

        loaded = load(run_dir)
        self.labels = loaded.config.stage.labels
        max_length = loaded.config.train.max_length
        self.predict = lambda texts: predict_proba(loaded.model, loaded.tokenizer, texts, max_length, batch_size)


def _is_classifier_run(run_dir: Path) -> bool:
    from .config import load_config
    from .models import SEQ_CLS
    from .stages import STAGES
    from .zeroshot import is_zeroshot_run

    if is_zeroshot_run(run_dir):
        return True
    return STAGES[load_config(run_dir / "config.yaml").stage.name].MODEL_KIND == SEQ_CLS


def _check_run(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        raise TunelabError(f"{run_dir} is not a run directory (no config.yaml)")
    if not (run_dir / "summary.json").is_file():
        raise TunelabError(f"run {run_dir} has not finished (no summary.json)")


def _cap(max_rows: int | dict[str, int] | None, name: str) -> int | None:
    """Rows to score of test set ``name``: one cap for all, or one per name."""
    return max_rows.get(name) if isinstance(max_rows, dict) else max_rows


def _read_labelled(name: str, file: str, known: list[str], max_rows: int | None) -> list[dict]:
    from .data import load_file

    _, rows = load_file(file, "classification")
    rows = rows[:max_rows] if max_rows else rows
    unknown = sorted({row["label"] for row in rows} - set(known))
    if unknown:
        raise TunelabError(f"--data {name}={file} has labels {unknown} the model never saw (it knows: {', '.join(known)})")
    return rows


def evaluate_classifier(run_dir: Path, data: dict[str, str], threshold: float | None, positive: str | None,
                        batch_size: int, max_rows) -> dict[str, dict]:
    classifier = _Classifier(run_dir, batch_size)
    labels = classifier.labels
    binary = len(labels) == 2
    if (threshold is not None or positive is not None) and not binary:
        raise TunelabError(f"--threshold/--positive apply to two-label tasks; this run has {len(labels)} labels")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise TunelabError(f"--threshold must be between 0 and 1 (got {threshold})")
    if positive is not None and positive not in labels:
        raise TunelabError(f"--positive {positive}: not a label of this run ({', '.join(labels)})")
    # Default positive class: the second label in sorted order (spam of ham/spam; 1 of 0/1), as scikit-learn does.
    positive_index = labels.index(positive if positive is not None else sorted(labels)[1]) if binary else None
    rows_by_name = {name: _read_labelled(name, file, labels, _cap(max_rows, name)) for name, file in data.items()}  # all checked first
    reports = {}
    for name, rows in rows_by_name.items():
        probs = classifier.predict([row["text"] for row in rows]).numpy()
        y_true = np.array([labels.index(row["label"]) for row in rows])
        report = classification_report(labels, y_true, probs, positive_index, threshold)
        reports[name] = {"task": "classification", "file": data[name], **report}
    return reports


@torch.inference_mode()
def evaluate_lm(run_dir: Path, data: dict[str, str], batch_size: int, max_rows) -> dict[str, dict]:
    from .data import load_file
    from .data.tokenize import encode_chat, encode_text
    from .inference import load
    from .stages._lm import PadCollator, causal_lm_loss

    loaded = load(run_dir)
    max_length = loaded.config.train.max_length
    collate = PadCollator(loaded.tokenizer.pad_token_id)
    sets = {}
    for name, file in data.items():
        fmt, rows = load_file(file)
        if fmt not in ("text", "instruction", "messages"):
            raise TunelabError(f"--data {name}={file} is in format '{fmt}'; a language-model run needs text or chat data")
        sets[name] = (fmt, rows[: _cap(max_rows, name)])
    reports = {}
    for name, (fmt, rows) in sets.items():
        if fmt == "text":
            examples = [w for row in rows for w in encode_text(loaded.tokenizer, row["text"], max_length)]
        else:
            examples = [e for e in (encode_chat(loaded.tokenizer, row["messages"], max_length) for row in rows) if e]
        total_loss, tokens = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size])
            count = int((batch["labels"][:, 1:] != -100).sum())
            loss, _ = causal_lm_loss(loaded.model, batch, num_items_in_batch=count)
            total_loss, tokens = total_loss + float(loss) * count, tokens + count
        if tokens == 0:
            raise TunelabError(f"--data {name}={file}: no tokens to score")
        mean = total_loss / tokens
        reports[name] = {"task": "causal-lm", "file": file, "n": len(rows), "tokens": tokens,
                         "loss": mean, "perplexity": math.exp(min(mean, 50))}
    return reports


def evaluate(run_dir: str | Path, data: dict[str, str], threshold: float | None = None, positive: str | None = None,
             batch_size: int = 16, max_rows: int | dict[str, int] | None = None, write: bool = True) -> dict:
    """Evaluate a finished run on every named test file; write ``eval/<name>.json`` (+ PNG) unless told not to.

    ``max_rows`` scores only the first N rows of each file (an int, or {name: N}).
    """
    run_dir = Path(run_dir)
    _check_run(run_dir)
    if _is_classifier_run(run_dir):
        reports = evaluate_classifier(run_dir, data, threshold, positive, batch_size, max_rows)
    else:
        if threshold is not None or positive is not None:
            raise TunelabError("--threshold/--positive apply to classification runs; this is a language-model run")
        reports = evaluate_lm(run_dir, data, batch_size, max_rows)
    if write:
        (run_dir / "eval").mkdir(exist_ok=True)
        for name, report in reports.items():
            rundir.write_json_atomic(run_dir / "eval" / f"{name}.json", report)
            if report["task"] == "classification":
                plot_confusion(report, run_dir / "eval" / f"{name}_confusion.png", f"{run_dir.name} on {name}")
    return {"run": str(run_dir), "data": reports}


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
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_report(result: dict) -> str:
    """The human-readable table: test sets side by side, then per-class scores and confusion matrices."""
    reports = result["data"]
    lines = [f"run: {result['run']}"]
    width = max(8, *(len(n) for n in reports))
    first = next(iter(reports.values()))
    if first["task"] == "causal-lm":
        lines.append(f"{'test set':<{width}} {'n':>6} {'tokens':>8} {'loss':>8} {'perplexity':>11}")
        for name, r in reports.items():
            lines.append(f"{name:<{width}} {r['n']:>6} {r['tokens']:>8} {r['loss']:>8.4f} {r['perplexity']:>11.3f}")
        return "\n".join(lines)
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
