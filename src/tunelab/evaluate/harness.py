"""`tunelab eval`: score a finished run — of any stage, or a baseline — on named test files, side by side.

The run's stage (or baseline) owns its evaluation: classify gives accuracy, per-class P/R/F1 and
a confusion matrix; pretrain/sft loss and perplexity (sft and generation baselines: ROUGE-L of
greedy replies with ``--generate``); reward pairwise accuracy and margin (rank
correlation on ratings); dpo preference accuracy and margin; rlhf mean reward under a reward
model. This module only opens the run, checks the options, asks the stage and writes
``RUN/eval/<name>.json`` (+ a confusion PNG for classifiers).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from ..core.errors import TunelabError
from ..runs import directory
from ..runs.open import load, load_links, open_run
from ..stages.base import EvalOptions
from .report import format_report, plot_confusion

__all__ = ["evaluate", "format_report", "parse_data_args"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_OPTION_FLAGS = {"threshold": "--threshold", "positive": "--positive", "generate": "--generate",
                 "max_new_tokens": "--max-new-tokens"}
_APPLIES_TO = {"threshold": "classifiers", "positive": "classifiers", "generate": "sft runs and generation baselines",
               "max_new_tokens": "sft runs and generation baselines"}


def parse_data_args(items: list[str]) -> dict[str, str]:
    """``NAME=FILE`` (or a bare ``FILE``, named after its stem) -> {name: file}, names unique."""
    data: dict[str, str] = {}
    for item in items:
        name, file = item.split("=", 1) if "=" in item else (Path(item).stem, item)
        if not _NAME.match(name):
            raise TunelabError(f"--data {item}: the name '{name}' may use only letters, digits, '_', '-' and '.'")
        if not file:
            raise TunelabError(f"--data {item}: no file after '='")
        if name in data:
            raise TunelabError(f"--data: the name '{name}' is given twice")
        data[name] = file
    if not data:
        raise TunelabError("give at least one test set: --data NAME=FILE")
    return data


def evaluate(run_dir: str | Path, data: dict[str, str], threshold: float | None = None, positive: str | None = None,
             batch_size: int = 16, max_rows: int | dict[str, int] | None = None, reward_model: str | None = None,
             write: bool = True, generate: int | None = None, max_new_tokens: int | None = None) -> dict:
    """Evaluate a finished run on every named test file; write ``eval/<name>.json`` (+ PNG) unless told not to.

    ``max_rows`` scores only the first N rows of each file (an int, or {name: N}); ``reward_model``
    replaces the reward run a stage scores with (rlhf); ``generate`` (sft runs, generation
    baselines) also scores greedy replies, of at most ``max_new_tokens``, to the first N rows.
    """
    run_dir = Path(run_dir)
    info = open_run(run_dir)
    owner = info.owner
    given = {"threshold": threshold, "positive": positive, "generate": generate, "max_new_tokens": max_new_tokens}
    for option, value in given.items():
        if value is not None and option not in info.eval_options:
            raise TunelabError(f"{_OPTION_FLAGS[option]} does not apply to {info.describe} "
                               f"(it applies to {_APPLIES_TO[option]})")
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # before the model loads, not after
        raise TunelabError(f"--threshold must be between 0 and 1 (got {threshold})")
    if generate is not None and generate < 0:
        raise TunelabError(f"--generate must be 0 or more rows (got {generate})")
    if max_new_tokens is not None and (max_new_tokens < 1 or not generate):
        raise TunelabError(f"--max-new-tokens {max_new_tokens}: " + (
            "give at least 1" if max_new_tokens < 1 else "it caps generated replies; give --generate N too"))
    links_needed = {link.field for link in getattr(owner, "LINKS", ())}
    if reward_model is not None and "reward_model" not in links_needed:
        raise TunelabError(f"--reward-model does not apply to {info.describe}")
    for name, file in data.items():  # every file checked before any model is loaded
        path = Path(file)
        if not path.exists():
            raise TunelabError(f"--data {name}={file}: file not found")
        if path.is_dir():
            raise TunelabError(f"--data {name}={file} is a directory, not a data file")
        if hasattr(owner, "check_data"):  # a baseline's own demands on a test file (RAG: its gold field)
            owner.check_data(info.config, name, file)
    loaded = load(run_dir)
    links = {} if info.baseline else load_links(info.config, overrides={"reward_model": reward_model} if reward_model else None)
    reports = {}
    for name, file in data.items():
        cap = max_rows.get(name) if isinstance(max_rows, dict) else max_rows
        options = EvalOptions(batch_size=batch_size, max_rows=cap, threshold=threshold, positive=positive, links=links,
                              generate=generate or 0, max_new_tokens=max_new_tokens or EvalOptions.max_new_tokens)
        started = time.perf_counter()
        reports[name] = owner.evaluate(loaded, name, file, options)
        seconds = time.perf_counter() - started  # the model is loaded already: this is inference cost
        reports[name]["eval_seconds"] = round(seconds, 3)
        reports[name]["latency_ms_per_example"] = round(1000 * seconds / max(int(reports[name].get("n") or 1), 1), 3)
    if write:
        (run_dir / "eval").mkdir(exist_ok=True)
        for name, report in reports.items():
            directory.write_json_atomic(run_dir / "eval" / f"{name}.json", report)
            if report["task"] == "classification":
                plot_confusion(report, run_dir / "eval" / f"{name}_confusion.png", f"{run_dir.name} on {name}")
    return {"run": str(run_dir), "stage": info.stage_name or info.baseline, "data": reports}
