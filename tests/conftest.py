"""Shared fixtures: a tiny world built per test (tiny models, synthetic data in tmp_path), no network.

Every dataset written here is SYNTHETIC: a handful of made-up rows per format, small enough that
a `tiny-llama` run on them takes seconds. Real data lives in data/ and is used only where a test
says so.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# No test may touch the network: Hub ids must fail fast with tunelab's offline error.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
DOLLY = REPO_ROOT / "data" / "instruct" / "dolly_subset.jsonl"

# --------------------------------------------------------------------------- synthetic rows

# SYNTHETIC rows, one list per (format, dialect). Short on purpose: every row fits max_length=64.
_FACTS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
          ("a ripe banana", "yellow"), ("a carrot", "orange"), ("a plum", "purple"), ("rust", "brown")]

SYNTHETIC_ROWS: dict[str, list[dict]] = {
    "text": [{"text": f"The colour of {thing} is {colour}. Everyone knows {thing} is {colour}."}
             for thing, colour in _FACTS],
    "dolly": [{"instruction": f"What colour is {thing}?", "context": "", "response": f"It is {colour}."}
              for thing, colour in _FACTS],
    "alpaca": [{"instruction": "Name the colour.", "input": thing, "output": f"{colour.capitalize()}."}
               for thing, colour in _FACTS],
    "openai": [{"messages": [{"role": "user", "content": f"Colour of {thing}?"},
                             {"role": "assistant", "content": f"{colour.capitalize()}."}]}
               for thing, colour in _FACTS],
    "sharegpt": [{"conversations": [{"from": "human", "value": f"Colour of {thing}?"},
                                    {"from": "gpt", "value": f"{colour.capitalize()}."}]}
                 for thing, colour in _FACTS],
    "classification": [{"text": f"I love {thing}!" if i % 2 else f"I hate {thing}.", "label": i % 2}
                       for i, (thing, _) in enumerate(_FACTS)],
    "preference": [{"prompt": f"What colour is {thing}?", "chosen": f"{colour.capitalize()}.",
                    "rejected": "I don't know."} for thing, colour in _FACTS],
}
# Which canonical format each dialect should be detected as.
DIALECT_FORMAT = {"text": "text", "dolly": "instruction", "alpaca": "instruction", "openai": "messages",
                  "sharegpt": "messages", "classification": "classification", "preference": "preference"}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as .jsonl / .json / .csv / .parquet, chosen by the path's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif suffix == ".csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"write_rows: unsupported suffix {suffix}")
    return path


@pytest.fixture
def synthetic_data(tmp_path):
    """Factory: ``synthetic_data("dolly", ".csv", n=8)`` writes SYNTHETIC rows to tmp_path, returns the path."""

    def make(dialect: str, suffix: str = ".jsonl", n: int | None = None, name: str | None = None) -> Path:
        rows = SYNTHETIC_ROWS[dialect][:n]
        return write_rows(tmp_path / (name or f"{dialect}{suffix}"), rows)

    return make


# --------------------------------------------------------------------------- configs and runs


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An output_dir for runs (not created: tunelab must create it)."""
    return tmp_path / "runs"


def tiny_config(stage: str, method: str, train_file: Path, output_dir: Path, **train) -> dict:
    """A run config for `tiny-llama` sized for seconds on 2 cores (override via **train)."""
    method_section = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0} if method == "lora" else {"name": method}
    train_section = {"max_steps": 3, "batch_size": 2, "max_length": 64, "lr": 1e-2, "warmup_ratio": 0.0,
                     "scheduler": "constant", "logging_steps": 1, "save_steps": 0, "eval_before": False}
    train_section.update(train)
    return {"model": "tiny-llama", "stage": stage, "method": method_section,
            "data": {"train": str(train_file), "eval_fraction": 0.25},
            "train": train_section, "output_dir": str(output_dir)}


def write_config(path: Path, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def tiny_run_config(tmp_path, out_dir, synthetic_data):
    """Factory: write a tiny-llama config YAML for (stage, method) on SYNTHETIC data; return its path."""

    def make(stage: str = "sft", method: str = "lora", **train) -> Path:
        data = synthetic_data("text" if stage == "pretrain" else "dolly", ".jsonl")
        return write_config(tmp_path / f"{stage}-{method}.yaml", tiny_config(stage, method, data, out_dir, **train))

    return make


def logged_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged to metrics.jsonl, in step order."""
    from tunelab.runs.directory import read_jsonl

    return [row["loss"] for row in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in row]


def saved_weights(run_dir: Path) -> dict:
    """Every tensor the run saved outside its checkpoints (an adapter, or the whole model for full fine-tuning)."""
    from safetensors.torch import load_file

    files = sorted(p for p in Path(run_dir).rglob("*.safetensors") if "checkpoints" not in p.parts)
    assert files, list(Path(run_dir).iterdir())
    return {f"{path.relative_to(run_dir)}:{key}": value for path in files for key, value in load_file(str(path)).items()}


def run_cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m tunelab ARGS`` in a subprocess; return (exit code, stdout, stderr)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=cwd or REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def cli():
    """The CLI runner: ``rc, out, err = cli("train", cfg, "train.max_steps=1")``."""
    return run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Factory: train (once per session) a tiny `stage` x `method` run through the CLI; return its run dir.

    Shared by the end-to-end and inference tests so each combination is trained only once.
    """
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("trained")

    def get(stage: str, method: str) -> Path:
        if (stage, method) not in cache:
            rows = SYNTHETIC_ROWS["text" if stage == "pretrain" else "dolly"]
            data = write_rows(root / f"{stage}.jsonl", rows)
            config = write_config(root / f"{stage}-{method}.yaml", tiny_config(stage, method, data, root / "runs"))
            rc, out, err = run_cli("train", config, "--quiet")
            assert rc == 0, f"training {stage}/{method} failed:\n{err[-3000:]}"
            cache[(stage, method)] = Path(out.strip().splitlines()[-1])
        return cache[(stage, method)]

    return get


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tunelab.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture
def cli_here(capsys, monkeypatch):
    """The CLI's entry point run in this process (same code path as `tunelab ...`, minus the start-up)."""
    from tunelab.cli import main

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["tunelab", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
