"""Write a baseline's run directory, so `tunelab eval` and `tunelab runs` treat it like a trained run."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from ..baselines import BASELINES
from ..core.errors import TunelabError
from ..models import count_params, resolve
from . import directory


def create_baseline_run(out: str | Path, name: str, cfg, overwrite: bool = False) -> Path:
    """Build the baseline (failing on bad settings before anything is written), then write its run."""
    module = BASELINES[name]
    out = Path(out)
    directory.check_writable(out.parent)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise TunelabError(f"run directory {out} already exists; use --overwrite to replace it")
    model, tokenizer = module.build(cfg)
    facts = module.check(cfg, model, tokenizer)
    _, total = count_params(model)
    summary = {
        "name": out.name, "stage": module.task(cfg), "method": name, "baseline": name,
        "model": getattr(cfg, "model", None) or "-", "model_path": resolve(cfg.model) if getattr(cfg, "model", None) else None,
        **facts,
        "trainable_params": 0, "total_params": total, "trainable_percent": 0.0, "train_seconds": 0.0,
        "metrics": {}, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if overwrite:
        directory.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        (out / "config.yaml").write_text(yaml.safe_dump({name: cfg.model_dump(mode="json")}, sort_keys=False))
        directory.write_json_atomic(out / "summary.json", summary)
        directory.index_run(out.parent, out, summary, "eval_loss")
    except BaseException:
        directory.clear(out)
        raise
    return out
