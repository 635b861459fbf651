"""Sweeps that run: a tiny 4-trial sweep, pruning of a trial whose metric is made bad, resume after
SIGKILL, and two processes sharing one SQLite study. Real Optuna, real SQLite, real tiny-bert runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO_ROOT, run_cli
from sweep_world import base_config, sweep_file, tiny_world

import tunelab
from tunelab.config import load_config
from tunelab.sweep.space import load_sweep
from tunelab.sweep.study import GRACE_SECONDS, open_study


def _study(out: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_a_four_trial_sweep_writes_the_table_best_yaml_plots_and_tagged_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    files = tiny_world(tmp_path)
    out = tmp_path / "sweep"
    sweep = {"base": base_config(files, report_to=["mlflow"]),
             "space": {"train.lr": {"log_uniform": [1e-4, 3e-3]}, "method.name": {"choice": ["full", "lora"]},
                       "method.r": {"choice": [2, 4]}},
             "objective": {"metric": "eval/held/accuracy", "direction": "maximize"}, "eval": {"held": str(files["held"])},
             "trials": 4, "pruner": "none", "output_dir": str(out)}
    result = tunelab.sweep(sweep_file(tmp_path, sweep), quiet=True)

    rows = result["table"]
    assert [r["state"] for r in rows] == ["complete"] * 4
    assert all(("method.r" in r["params"]) == (r["params"]["method.name"] == "lora") for r in rows)
    best = load_config(out / "best.yaml")  # ready to train: a valid run config with the best params
    assert best.train.lr == pytest.approx(result["best_params"]["train.lr"])
    assert best.method.name == result["best_params"]["method.name"]
    assert result["best_value"] == max(r["value"] for r in rows)
    for name in ("history.png", "slice.png"):
        assert (out / name).stat().st_size > 1000
    for row in rows:  # every trial is an ordinary run directory, tagged with its study and trial
        run = Path(row["run_dir"])
        assert json.loads((run / "sweep.json").read_text())["trial"] == row["trial"]
        assert json.loads((run / "eval" / "held.json").read_text())["accuracy"] == pytest.approx(row["value"])

    from mlflow.tracking import MlflowClient  # every trial logged, grouped by study (the experiment "tiny")

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'trials' / 'mlflow.db'}")
    logged = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(int(r.data.tags["tunelab.trial"]) for r in logged) == [0, 1, 2, 3]

    rc, printed, err = run_cli("sweep", "--report", out)  # the same table again, from the study
    assert rc == 0, err
    assert printed.splitlines()[0].split() == ["trial", "state", "method.name", "train.lr", "method.r",
                                               "eval/held/accuracy", "seconds"]
    assert "best config:" in printed and len(printed.splitlines()) >= 5


def test_pruning_stops_a_trial_whose_metric_is_made_bad(tmp_path):
    """Two trials evaluate on the held-out file; the third on the same file with every label flipped:
    its eval loss rises as the model learns, and the median pruner stops it at its first evaluation."""
    files = tiny_world(tmp_path)
    out = tmp_path / "sweep"
    sweep = {"base": base_config(files, max_steps=6, eval_steps=2),
             "space": {"data.eval": {"choice": [str(files["held"]), str(files["flipped"])]}},
             "objective": {"metric": "eval_loss"}, "trials": 3, "pruner": "median", "output_dir": str(out)}
    config, base, here = load_sweep(sweep)
    study = open_study(config)
    for eval_file in (files["held"], files["held"], files["flipped"]):
        study.enqueue_trial({"data.eval": str(eval_file)})
    result = tunelab.sweep(sweep, quiet=True)
    rows = result["table"]
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"], rows
    assert rows[2]["pruned_at_step"] == 2
    summary = json.loads((Path(rows[2]["run_dir"]) / "summary.json").read_text())
    assert summary["steps"] == 2  # stopped early, of 6 planned: a pruned trial is still a run directory
    assert json.loads((Path(rows[0]["run_dir"]) / "summary.json").read_text())["steps"] == 6


def _start(sweep: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", "sweep", str(sweep), "--quiet", *extra], cwd=REPO_ROOT,
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_a_sweep_killed_mid_trial_resumes_without_rerunning_finished_trials(tmp_path):
    files = tiny_world(tmp_path)
    out = tmp_path / "sweep"
    path = sweep_file(tmp_path, {"base": base_config(files, max_steps=4), "space": {"train.lr": {"log_uniform": [1e-4, 3e-3]}},
                                 "trials": 3, "pruner": "none", "output_dir": str(out)}, name="resume")
    proc = _start(path)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 while trial 1 is training, after trial 0 finished
        if (out / "trials" / "trial-001" / "metrics.jsonl").exists():
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("trial 1 never started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    finished_0 = json.loads((out / "trials" / "trial-000" / "summary.json").read_text())["finished_at"]
    assert _states(_study(out, "resume")) == ["COMPLETE", "RUNNING"]

    time.sleep(GRACE_SECONDS + 1)  # the killed trial's heartbeat goes stale
    _wait(_start(path))
    study = _study(out, "resume")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params  # the interrupted trial was retried with its params
    # trial 0 was not trained again
    assert json.loads((out / "trials" / "trial-000" / "summary.json").read_text())["finished_at"] == finished_0


def test_two_processes_share_one_study_and_its_trial_budget(tmp_path):
    files = tiny_world(tmp_path)
    out = tmp_path / "sweep"
    path = sweep_file(tmp_path, {"base": base_config(files), "space": {"train.lr": {"log_uniform": [1e-4, 3e-3]}},
                                 "trials": 4, "pruner": "none", "seed": 1, "output_dir": str(out)}, name="shared")
    first, second = _start(path), _start(path)
    _wait(first), _wait(second)
    trials = _study(out, "shared").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.params["train.lr"] for t in trials}) == 4  # no trial run twice
    assert sorted(p.name for p in (out / "trials").iterdir() if p.is_dir()) == [f"trial-00{i}" for i in range(4)]


def test_grid_sampler_visits_every_choice_once_under_successive_halving(tmp_path):
    files = tiny_world(tmp_path)
    out = tmp_path / "sweep"
    lrs = [1e-3, 3e-3]
    sweep = {"base": base_config(files, max_steps=4, eval_steps=2), "space": {"train.lr": {"choice": lrs}},
             "objective": {"metric": "eval_loss"}, "trials": 2, "sampler": "grid",
             "pruner": "successive_halving", "output_dir": str(out)}
    rows = tunelab.sweep(sweep, quiet=True)["table"]
    assert len(rows) == 2 and all(r["state"] in ("complete", "pruned") for r in rows), rows
    assert sorted(t.params["train.lr"] for t in _study(out, load_sweep(sweep)[0].study_name).get_trials()) == lrs
