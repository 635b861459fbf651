"""One approach's row of the comparison: its metrics on every test set, cost and forgetting."""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

from ..core.errors import TunelabError
from ..runs import directory
from .config import Approach, CompareConfig

LOWER_IS_BETTER = ("perplexity", "loss")


def fingerprint(text: str | bytes) -> str:
    """A short content hash: what a cached run or evaluation was made from."""
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode("utf-8")).hexdigest()[:16]


def _rows_cap(cfg: CompareConfig, name: str, approach: Approach | None = None) -> int | None:
    """Rows scored of test set ``name``: the approach's own cap where it sets one, else data.test_rows."""
    for rows in ((approach.test_rows if approach else None), cfg.data.test_rows):
        cap = rows.get(name) if isinstance(rows, dict) else rows
        if cap is not None:
            return cap
    return None


def metric_value(report: dict, metric: str) -> float | None:
    """A (dotted) metric of a report, e.g. f1, accuracy, macro.f1; None when the report lacks it."""
    node = report
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def default_metric(task: str, generate: int) -> str:
    if task == "classification":
        return "f1"
    return "rouge_l" if generate else "perplexity"


def evaluate_approach(cfg: CompareConfig, approach: Approach, run_dir: Path, summaries: list[dict], out: Path) -> dict:
    reports = _test_reports(cfg, approach, run_dir, summaries[-1], out)
    first = next(iter(reports.values()))
    metric = cfg.metric or default_metric(first.get("task", ""), cfg.generate)
    lower = metric.split(".")[-1] in LOWER_IS_BETTER
    tests = {}
    for name, report in reports.items():
        value = metric_value(report, metric)
        if value is None:
            raise TunelabError(f"metric '{metric}' is not reported for approach '{approach.name}' on {name} "
                               f"(it reports: {', '.join(sorted(k for k, v in report.items() if isinstance(v, (int, float))))})")
        tests[name] = {"value": value, "n": report.get("n"), "metrics": _scalars(report),
                       "latency_ms": report.get("latency_ms_per_example"),
                       "prompt_tokens": report.get("prompt_tokens_per_query")}
    final = summaries[-1]
    trained = not approach.is_baseline
    row = {
        "name": approach.name, "kind": approach.kind, "stage": final.get("stage"), "method": final.get("method"),
        "model": getattr(approach.steps[0], "model", None), "after": approach.after, "steps": len(approach.steps),
        "trainable_params": final.get("trainable_params", 0) if trained else 0,
        "total_params": final.get("total_params"),
        "trainable_percent": final.get("trainable_percent", 0.0) if trained else 0.0,
        "train_seconds": round(sum(s.get("train_seconds", 0.0) for s in summaries), 2) if trained else 0.0,
        "peak_rss_mb": max((s["peak_rss_mb"] for s in summaries if s.get("peak_rss_mb")), default=None),
        "metric_name": metric, "lower_is_better": lower, "tests": tests, "run_dir": str(run_dir),
    }
    row.update(_forgetting(cfg, approach, run_dir, out))
    return row


def _scalars(report: dict) -> dict:
    out = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(report.get("macro"), dict) and "f1" in report["macro"]:
        out["macro.f1"] = report["macro"]["f1"]
    return out


def _test_reports(cfg: CompareConfig, approach: Approach, run_dir: Path, final: dict, out: Path) -> dict:
    """Reports per test set, from the cache when run, file and options are unchanged; the rest in one load."""
    from ..evaluate import evaluate

    stamp = [final.get("finished_at"), (run_dir / "config.yaml").read_text(), cfg.generate, cfg.max_new_tokens]
    cache_dir = out / "evals" / approach.name
    reports, missing, keys = {}, {}, {}
    for name, file in cfg.data.test.items():
        keys[name] = fingerprint(json.dumps(stamp + [fingerprint(Path(file).read_bytes()), _rows_cap(cfg, name, approach)]))
        cached = cache_dir / f"{name}.json"
        if cached.is_file():
            entry = json.loads(cached.read_text())
            if entry.get("key") == keys[name]:
                reports[name] = entry["report"]
                continue
        missing[name] = file
    if missing:
        options = {"generate": cfg.generate, "max_new_tokens": cfg.max_new_tokens} if cfg.generate else {}
        result = evaluate(run_dir, missing, max_rows={n: _rows_cap(cfg, n, approach) for n in missing},
                          batch_size=cfg.batch_size, **options)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name, report in result["data"].items():
            directory.write_json_atomic(cache_dir / f"{name}.json", {"key": keys[name], "report": report})
            reports[name] = report
    return {name: reports[name] for name in cfg.data.test}


# --------------------------------------------------------------------------- forgetting


def _forgetting(cfg: CompareConfig, approach: Approach, run_dir: Path, out: Path) -> dict:
    """General-text perplexity of a language-model approach, and its change from the base model."""
    from ..runs.open import open_run

    empty = {"general_perplexity": None, "general_perplexity_base": None, "general_perplexity_change": None}
    if not cfg.forgetting.text or open_run(run_dir).model_kind != "causal-lm":
        return empty
    base_model = approach.steps[0].model
    base = _cached_perplexity(cfg, out, f"base-{fingerprint(base_model)}", base_model, None)
    if approach.is_baseline:  # the published weights: no change by construction
        return {"general_perplexity": base, "general_perplexity_base": base, "general_perplexity_change": 0.0}
    ppl = _cached_perplexity(cfg, out, f"run-{approach.name}", run_dir,
                             json.loads((run_dir / "summary.json").read_text()).get("finished_at"))
    return {"general_perplexity": ppl, "general_perplexity_base": base,
            "general_perplexity_change": (ppl - base) / base if base else None}


def _cached_perplexity(cfg: CompareConfig, out: Path, key: str, what, stamp) -> float:
    f = cfg.forgetting
    token = fingerprint(json.dumps([str(what), stamp, fingerprint(Path(f.text).read_bytes()), f.max_rows, f.max_length]))
    path = out / "evals" / "general" / f"{key}.json"
    if path.is_file():
        entry = json.loads(path.read_text())
        if entry.get("key") == token:
            return entry["perplexity"]
    ppl = text_perplexity(what, f.text, f.max_rows, f.max_length, cfg.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    directory.write_json_atomic(path, {"key": token, "perplexity": ppl, "file": f.text, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return ppl


def text_perplexity(run_or_model, file: str, max_rows: int, max_length: int, batch_size: int) -> float:
    """Per-token perplexity of a causal LM (run or model spec) on a text file, first ``max_rows`` documents."""
    from ..runs.open import load
    from ..stages._lm import evaluate_lm
    from ..stages.base import EvalOptions

    loaded = load(run_or_model)
    probe = SimpleNamespace(model=loaded.model, tokenizer=loaded.tokenizer,
                            config=SimpleNamespace(train=SimpleNamespace(max_length=max_length)))
    report = evaluate_lm(probe, "general", file, EvalOptions(batch_size=batch_size, max_rows=max_rows))
    return float(report["perplexity"]) if math.isfinite(report["perplexity"]) else float("inf")
