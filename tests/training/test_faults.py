"""Runs that survive faults: SIGKILL at any moment then `--resume` ends with the uninterrupted run's
weights; a NaN/inf loss stops the run with one error line and keeps the last good checkpoint; two
`tunelab train` on one run directory: the second refuses. SYNTHETIC data (conftest), tiny models.
"""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SYNTHETIC_ROWS, run_cli, tiny_config, write_config, write_rows

from tunelab.runs.directory import last_checkpoint

DRIVER = Path(__file__).with_name("fault_driver.py")
TOLERANCE = 1e-5

# 6 train rows, batch 2: 3 optimizer steps per epoch, checkpoints at every step (2 kept). The kills
# land mid-epoch (resume at step 2, inside epoch 0; step 4, inside epoch 1) and on an epoch boundary
# (resume at step 6), once the moment checkpoint-7 starts being written.
KILLS = [{"when": "checkpoint", "step": 2},   # somewhere in step 3, after checkpoint-2 was published
         {"when": "hook", "step": 5},         # inside the write of checkpoint-5: resumes from 4
         {"when": "staging", "step": 7}]      # the moment checkpoint-7 starts being written: from 6
SCENARIOS = {
    # sft with packing, LoRA with dropout (so the RNG state matters too), an eval every epoch
    "sft-lora-packed": dict(stage="sft", method="lora", rows="dolly", model="tiny-llama", method_extra={"dropout": 0.1}),
    # classify on an encoder, full fine-tuning (BERT's dropout 0.1 on), an eval every epoch
    "classify-full-bert": dict(stage="classify", method="full", rows="classification", model="tiny-bert", method_extra={}),
}


def _config(tmp_path: Path, name: str, out_dir: Path, scenario: dict, **train) -> Path:
    data = write_rows(tmp_path / f"{scenario['rows']}.jsonl", SYNTHETIC_ROWS[scenario["rows"]])
    config = tiny_config(scenario["stage"], scenario["method"], data, out_dir, **train)
    config["model"] = scenario["model"]
    config["method"].update(scenario["method_extra"])
    return write_config(tmp_path / f"{name}.yaml", config)


@pytest.fixture(scope="module")
def kill_reports(tmp_path_factory):
    """Run every scenario through the driver (one process: the imports are paid once); their reports."""
    tmp_path = tmp_path_factory.mktemp("faults")
    settings = dict(max_steps=8, save_steps=1, save_total_limit=2)
    scenarios = {}
    for name, scenario in SCENARIOS.items():
        folder = tmp_path / name
        scenarios[name] = {
            "reference": str(_config(folder, "reference", folder / "reference", scenario, **settings)),
            "config": str(_config(folder, "killed", folder / "killed", scenario, **settings)),
            "kills": KILLS}
    (tmp_path / "spec.json").write_text(json.dumps({"timeout": 240, "scenarios": scenarios}))
    started = time.time()
    proc = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "spec.json")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nkill/resume driver: {time.time() - started:.1f}s")
    for name, report in reports.items():
        if "error" in report:
            report["error"] += "\n" + "".join(p.read_text()[-3000:] for p in sorted((tmp_path / f"{name}.logs").glob("*.log")))
    return reports


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_killed_at_random_moments_resumes_to_the_same_weights(kill_reports, scenario):
    report = kill_reports[scenario]
    assert "error" not in report, report["error"]
    print(f"\n{scenario}: max abs diff {report['max_abs_diff']:.3g} over {report['weights']} tensors; "
          f"kills {[(k['when'], k['step'], k['newest_complete']) for k in report['kills']]}")
    for kill, resumes_from in zip(report["kills"], ["checkpoint-2", "checkpoint-4", "checkpoint-6"]):
        assert kill["rc"] == -signal.SIGKILL, f"not killed as planned: {kill}"
        assert not kill["summary_written"]
        # Only complete checkpoints under checkpoints/: the newest complete one is where --resume goes.
        assert kill["newest_complete"] == resumes_from, kill
    assert report["kills"][2]["staging_left"] == ["checkpoint-7"]  # killed while writing it
    assert report["summary"]["steps"] == 8
    steps = report["logged_steps"]
    assert steps == sorted(set(steps)) and steps[-1] == 8, f"metrics.jsonl repeats or misses steps: {steps}"
    assert report["checkpoints_left"] == ["checkpoint-7", "checkpoint-8"]  # rotation kept the newest 2
    assert report["same_keys"] and report["weights"] > 0
    assert report["max_abs_diff"] <= TOLERANCE, f"resumed weights differ by {report['max_abs_diff']:.3g}"


# --------------------------------------------------------------------------- NaN / inf loss


def _assert_one_error_line(rc: int, out: str, err: str) -> str:
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, err[-3000:]
    assert not out.strip() or not out.strip().splitlines()[-1].startswith("/"), "a run directory was printed"
    return lines[-1]


def _sft_config(tmp_path: Path, name: str, **train) -> tuple[Path, Path]:
    data = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    out_dir = tmp_path / name
    config = write_config(tmp_path / f"{name}.yaml", tiny_config("sft", "lora", data, out_dir, **train))
    return config, out_dir / "sft-lora-tiny-llama"


def test_absurd_lr_stops_at_the_step_whose_loss_is_not_finite(tmp_path):
    config, run = _sft_config(tmp_path, "absurd", max_steps=6, save_steps=1, lr=1e30)
    line = _assert_one_error_line(*run_cli("train", config, "--quiet"))
    print(f"\n{line}")
    match = re.search(r"train loss became (nan|inf|-inf) at step (\d+)", line)
    assert match, line
    step = int(match.group(2))
    assert step >= 2 and f"checkpoint-{step - 1}" in line and "--resume" in line
    assert not (run / "summary.json").exists()
    assert last_checkpoint(run).name == f"checkpoint-{step - 1}"
    assert not (run / "checkpoints" / ".staging").exists()
    logged = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)
    assert max(r["step"] for r in logged) == step - 1


def test_nan_loss_keeps_the_last_good_checkpoint_and_resume_finishes(tmp_path):
    config, run = _sft_config(tmp_path, "nan", max_steps=5, save_steps=1)
    line = _assert_one_error_line(*run_cli("train", config, "--quiet", env={"TUNELAB_TEST_NAN_AT_STEP": "3"}))
    print(f"\n{line}")
    assert "train loss became nan at step 3" in line and "checkpoint-2" in line, line
    assert not (run / "summary.json").exists() and last_checkpoint(run).name == "checkpoint-2"

    rc, out, err = run_cli("train", config, "--quiet", "--resume")
    assert rc == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 5 and math.isfinite(summary["metrics"]["train_loss"])
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == [1, 2, 3, 4, 5], steps


# --------------------------------------------------------------------------- one run directory, one process


def test_second_train_on_the_same_run_directory_refuses_and_the_first_is_unharmed(tmp_path):
    config, run = _sft_config(tmp_path, "locked", max_steps=4)
    lock = run.parent / f".{run.name}.lock"
    command = [sys.executable, "-m", "tunelab", "train", str(config), "--quiet"]
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while first.poll() is None and time.time() < deadline:
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before it could be raced"
        first.send_signal(signal.SIGSTOP)  # hold it, lock and all, while the second one tries
        try:
            started = time.time()
            # --overwrite would delete the first run's directory from under it, --resume would train
            # on top of it: both must be refused, at once, before anything is touched.
            for flag in ("--overwrite", "--resume"):
                line = _assert_one_error_line(*run_cli("train", config, "--quiet", flag))
                assert str(run) in line and "in use" in line and f"pid {first.pid}" in line, line
            assert time.time() - started < 120
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not lock.exists()  # released (and removed) at the end of the run
