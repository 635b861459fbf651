"""`tunelab compare`: should I fine-tune at all? Every approach on the same data, measured the same way.

Zero-shot, in-context learning and retrieval baselines sit beside trained runs (any stage, any
method, chains). The result is ``compare.json`` (one row per approach), a terminal table, plots,
a self-contained ``report.html`` and a recommendation computed from the figures.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.machine import describe_machine, machine_line
from ..runs import directory
from .config import CompareConfig, load_compare_config
from .recommend import recommend
from .report import format_table, plot_all, write_html

__all__ = ["compare", "format_table", "load_compare_config", "CompareConfig"]


def compare(source: str | Path | dict, overrides: list[str] | None = None, verbose: bool = False) -> dict:
    """Run (or reuse) every approach of a compare file, evaluate all, write the report; the result as data."""
    import yaml

    from .runner import run_compare

    cfg, approaches = load_compare_config(source, overrides)
    out = Path(cfg.output_dir)
    directory.check_writable(out.parent if not out.exists() else out)
    from ..core import console
    from ..training.progress import library_output

    # two compares in one directory would train the same runs twice; library bars only with -v
    with directory.RunLock(out), library_output(console.VERBOSE if verbose else console.NORMAL):
        rows = run_compare(cfg, approaches, verbose)
    primary = cfg.primary_test
    machine = describe_machine()
    from .recommend import _score

    best = max(rows, key=lambda r: _score(r, primary))
    result = {
        "title": f"{cfg.name or 'compare'}: {len(rows)} approaches on {', '.join(cfg.data.test)}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "machine_line": machine_line(machine),
        "version": _version(), "primary": primary, "metric": rows[0]["metric_name"],
        "lower_is_better": rows[0]["lower_is_better"], "source": cfg.forgetting.source,
        "forgetting_text": cfg.forgetting.text, "best": best["name"],
        "tests": {name: {"file": file, "rows": (cfg.data.test_rows.get(name) if isinstance(cfg.data.test_rows, dict)
                                                 else cfg.data.test_rows)} for name, file in cfg.data.test.items()},
        "rows": rows, "recommendation": recommend(rows, primary, cfg.forgetting.source),
        "config": cfg.model_dump(mode="json"),
    }
    result["config_yaml"] = yaml.safe_dump(result["config"], sort_keys=False)
    directory.write_json_atomic(out / "compare.json", result)
    plots = plot_all(result, out)
    write_html(result, plots, out / "report.html")
    (out / "compare.md").write_text(format_table(result) + "\n")
    return result


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunelab")
    except PackageNotFoundError:
        return "dev"
