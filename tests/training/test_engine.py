"""End-to-end `tunelab train` runs on tiny-llama: the run-directory contract, what trained, resume.

Runs go through the CLI in a subprocess, on SYNTHETIC data (conftest), 3 optimizer steps each.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, write_config, tiny_config
from safetensors.torch import load_file
from transformers import AutoTokenizer

import tunelab
from tunelab.config import load_config
from tunelab.models import resolve
from tunelab.runs.directory import last_checkpoint, read_jsonl
from tunelab.stages import STAGES

COMBOS = [("pretrain", "full"), ("pretrain", "lora"), ("sft", "full"), ("sft", "lora")]
IDS = [f"{s}-{m}" for s, m in COMBOS]
SUMMARY_KEYS = {"stage", "method", "model", "trainable_params", "total_params", "train_seconds", "peak_rss_mb",
                "train_tokens", "metrics"}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    assert tensors, f"no safetensors in {directory}"
    return tensors


@pytest.mark.parametrize("stage, method", COMBOS, ids=IDS)
def test_run_directory_contract(trained_run, stage, method):
    run = trained_run(stage, method)
    assert run.name == f"{stage}-{method}-tiny-llama" and run.is_dir()

    cfg = load_config(run / "config.yaml")  # fully resolved: defaults written out, and it re-validates
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_length"] == 64 and "weight_decay" in saved["train"]
    assert (cfg.stage.name, cfg.method.name, cfg.model) == (stage, method, "tiny-llama")

    records = read_jsonl(run / "metrics.jsonl")
    assert any("loss" in r and math.isfinite(r["loss"]) for r in records)
    evals = [r for r in records if "eval_loss" in r]
    assert evals and all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert all("step" in r for r in records)

    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["stage"], summary["method"], summary["model"]) == (stage, method, "tiny-llama")
    assert summary["steps"] == 3 and summary["train_seconds"] > 0 and summary["peak_rss_mb"] > 0
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    assert summary["metrics"]["eval_perplexity"] == pytest.approx(math.exp(summary["metrics"]["eval_loss"]))
    # 3 steps x batch 2 = a whole number of passes over the (possibly packed) train rows, so the
    # count of real (non-padding) tokens trained on is known exactly.
    train_ds, _ = STAGES[stage].build_datasets(cfg, AutoTokenizer.from_pretrained(run / "tokenizer"))
    passes, rest = divmod(summary["steps"] * cfg.train.batch_size, len(train_ds))
    assert rest == 0 and passes >= 1, f"{len(train_ds)} rows: the test data no longer gives whole epochs"
    assert summary["train_tokens"] == passes * sum(len(example["input_ids"]) for example in train_ds)

    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "tokenizer" / "tokenizer_config.json").is_file()
    if method == "lora":
        assert (run / "adapter" / "adapter_config.json").is_file()
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        assert not (run / "model").exists()
    else:
        assert list((run / "model").glob("*.safetensors")) and (run / "model" / "config.json").is_file()
        assert not (run / "adapter").exists()


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_full_finetuning_changed_every_weight(trained_run, stage):
    run = trained_run(stage, "full")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"]
    base, tuned = _weights(Path(resolve("tiny-llama"))), _weights(run / "model")
    assert base.keys() == tuned.keys()
    unchanged = [key for key in base if torch.equal(base[key], tuned[key])]
    assert not unchanged, f"weights that should have trained did not change: {unchanged}"
    assert sum(t.numel() for t in tuned.values()) == summary["total_params"]


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_lora_trained_adapter_and_froze_the_base(trained_run, stage):
    run = trained_run(stage, "lora")
    summary = json.loads((run / "summary.json").read_text())
    adapter = _weights(run / "adapter")
    # Everything that trained was saved in the adapter, and the adapter holds only LoRA matrices.
    assert all("lora_A" in key or "lora_B" in key for key in adapter), sorted(adapter)
    assert sum(t.numel() for t in adapter.values()) == summary["trainable_params"] < summary["total_params"]
    # lora_B starts at zero (peft's init): non-zero now means the adapter trained.
    b_matrices = {k: t for k, t in adapter.items() if "lora_B" in k}
    assert b_matrices and all(t.abs().sum() > 0 for t in b_matrices.values())

    loaded = tunelab.load(run).model
    base = _weights(Path(resolve("tiny-llama")))
    frozen = {name.replace("base_model.model.", "").replace(".base_layer", ""): param
              for name, param in loaded.named_parameters() if "lora_" not in name}
    assert set(frozen) == set(base)
    changed = [name for name, param in frozen.items() if not torch.equal(param.detach(), base[name])]
    assert not changed, f"frozen base weights changed: {changed}"


def test_runs_lists_every_run(trained_run, cli):
    runs = [trained_run(stage, method) for stage, method in COMBOS]
    rc, out, err = cli("runs", "--output-dir", runs[0].parent)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "stage", "method", "model"]
    for (stage, method), run in zip(COMBOS, runs):
        row = next(line for line in lines if line.startswith(run.name + " "))
        assert row.split()[1:4] == [stage, method, "tiny-llama"] and "eval_perplexity=" in row


def test_resume_after_kill(tmp_path, synthetic_data):
    """SIGKILL a run after its first checkpoint; `--resume` picks up from it and finishes."""
    out_dir = tmp_path / "runs"
    config = write_config(tmp_path / "resume.yaml", tiny_config(
        "sft", "lora", synthetic_data("dolly"), out_dir, max_steps=8, save_steps=2, save_total_limit=5))
    run = out_dir / "sft-lora-tiny-llama"
    command = [sys.executable, "-m", "tunelab", "train", str(config), "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy())
    deadline = time.time() + 240
    state = run / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    while proc.poll() is None and time.time() < deadline:
        if state.is_file():  # trainer_state.json is written last: the checkpoint is complete
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished (or failed) before it could be interrupted"
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    checkpoint = last_checkpoint(run)
    assert checkpoint is not None
    killed_at = int(checkpoint.name.split("-")[1])
    assert 2 <= killed_at < 8
    # A kill during a later save leaves a checkpoint without trainer_state.json: it must be skipped.
    torn = run / "checkpoints" / f"checkpoint-{killed_at + 1}"
    torn.mkdir(exist_ok=True)
    (torn / "model.safetensors").write_bytes(b"\0" * 16)
    assert last_checkpoint(run) == checkpoint

    # A plain rerun refuses to clobber the interrupted run...
    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert rerun.returncode == 2 and "--resume" in rerun.stderr
    # ...and --resume finishes it from the checkpoint.
    resumed = subprocess.run(command + ["--resume"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps.count(1) == 1, f"step 1 was trained twice: the run restarted instead of resuming ({steps})"
    assert 8 in steps
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("amx, probe_faster, precision, expected", [
    (True, False, "auto", True), (False, False, "auto", False), (False, True, "auto", True),
    (False, False, "bf16", True), (True, True, "fp32", False), (False, True, "fp32", False)])
def test_auto_precision_uses_bf16_only_where_it_is_faster(monkeypatch, amx, probe_faster, precision, expected):
    """AMX is fast in bf16 without asking; without AMX the cached matmul probe decides."""
    import torch

    from tunelab.core import bf16_speed
    from tunelab.training import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(bf16_speed, "bf16_matmul_faster", lambda: probe_faster)
    assert trainer.use_bf16(precision) is expected


def test_forcing_bf16_without_hardware_support_is_a_clear_error(monkeypatch):
    import torch

    from tunelab.training import trainer
    from tunelab.core.errors import TunelabError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(TunelabError, match="train.precision=bf16"):
        trainer.use_bf16("bf16")


def test_peak_rss_is_this_process_own_not_the_spawning_parents():
    """`tunelab compare` trains each step in a child process: ru_maxrss would report the parent's
    peak there (Linux keeps it across fork+exec); the run's figure must be the child's own."""
    import subprocess
    import sys

    ballast = bytearray(400 * 2**20)  # the parent holds 400 MB while the child runs
    code = "from tunelab.training.engine import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert len(ballast) and child < 300, child
