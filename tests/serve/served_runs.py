"""Tiny runs the serve tests share, trained in-process once per session (seconds each on tiny-llama).

Two LoRA runs on different SYNTHETIC data with different seeds (so their greedy replies differ),
a bottleneck-adapter run, an (IA)³ run, a full run, a prompt-tuning run, a classify run and a reward run.
They train in fp32 on every machine: the serve tests compare greedy tokens of runs that must differ,
and `precision: auto` (bf16 on CPUs with AMX) would make a tiny run's greedy reply depend on the CPU.
"""
from __future__ import annotations

from pathlib import Path

from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

_TRAINED: dict[str, Path] = {}

# name -> (stage, method, data dialect, seed, lr)
RUNS = {
    "lora-a": ("sft", "lora", "dolly", 1, 5e-2),
    "lora-b": ("sft", "lora", "alpaca", 2, 1e-1),
    "adapter": ("sft", "adapter", "dolly", 3, 5e-2),
    "ia3": ("sft", "ia3", "openai", 4, 1.0),
    "full": ("sft", "full", "dolly", 5, 1e-2),
    "prompt": ("sft", "prompt", "dolly", 8, 1e-1),
    "classify": ("classify", "lora", "classification", 6, 1e-2),
    "reward": ("reward", "lora", "preference", 7, 1e-2),
}


def trained(name: str, root: Path) -> Path:
    """The run directory of ``name`` (see RUNS), trained on first use."""
    if name not in _TRAINED:
        from tunelab.training.engine import train

        stage, method, dialect, seed, lr = RUNS[name]
        data = write_rows(root / f"{name}.jsonl", SYNTHETIC_ROWS[dialect])
        cfg = tiny_config(stage, method, data, root / "runs", max_steps=4, lr=lr, seed=seed,
                          precision="fp32")
        cfg["name"] = name
        _TRAINED[name] = Path(train(cfg, quiet=True))
    return _TRAINED[name]
