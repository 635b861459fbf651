"""Sweep files are checked before the first trial: every bad input is one line naming the key or value."""
from __future__ import annotations

import copy

import optuna
import pytest
from sweep_world import base_config, tiny_world

from tunelab.core.errors import TunelabError
from tunelab.sweep.space import SweepConfig, apply_params, load_sweep
from tunelab.sweep.study import open_study, suggest


@pytest.fixture
def sweep(tmp_path):
    files = tiny_world(tmp_path)
    return {"base": base_config(files), "space": {"train.lr": {"log_uniform": [1e-4, 1e-2]}},
            "objective": {"metric": "eval/held/f1", "direction": "maximize"}, "eval": {"held": str(files["held"])},
            "trials": 4, "output_dir": str(tmp_path / "sweep")}


def _error(sweep: dict, **change) -> str:
    raw = copy.deepcopy(sweep)
    for key, value in change.items():
        raw[key] = value
    with pytest.raises(TunelabError) as info:
        load_sweep(raw)
    return str(info.value)


def test_a_valid_sweep_loads(sweep, tmp_path):
    config, base, _ = load_sweep(sweep)
    assert config.trials == 4 and config.study_name == "sweep" and base["model"] == "tiny-bert"
    assert not (tmp_path / "sweep").exists()  # loading writes nothing


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"unknown key 'train.lrr'.*did you mean 'train.lr'"),
    ({"method.r": {"choice": [4, 8]}}, r"unknown key 'method.r' for method full.*"),
    ({"method.name": {"choice": ["lora", "adaptr"]}}, r"unknown method 'adaptr' \(did you mean 'adapter'\?\)"),
    ({"train.lr": {"log_uniform": [1e-2, 1e-4]}}, r"space.train.lr: log_uniform range \[0.01, 0.0001\] is empty or inverted"),
    ({"train.lr": {"uniform": [0.1, 0.1]}}, r"empty or inverted"),
    ({"train.lr": {"log_uniform": [0, 1e-3]}}, r"log_uniform needs a low above 0"),
    ({"train.batch_size": {"choice": []}}, r"space.train.batch_size: choice needs a non-empty list"),
    ({"train.lr": {"loguniform": [1e-4, 1e-3]}}, r"did you mean 'log_uniform'"),
    ({"train.batch_size": {"choice": [0, 2]}}, r"train.batch_size: input should be greater than or equal to 1"),
    ({}, r"space is empty"),
])
def test_bad_spaces_are_named(sweep, space, message):
    assert pytest.raises(TunelabError, load_sweep, {**sweep, "space": space}).match(message)


def test_bad_objectives_budgets_and_sweep_keys_are_named(sweep):
    assert "trials: must be at least 1" in _error(sweep, trials=0)
    assert "no eval set 'sms' (eval sets: held)" in _error(sweep, objective={"metric": "eval/sms/f1"})
    assert "does not report 'f2'; did you mean 'f1'?" in _error(sweep, objective={"metric": "eval/held/f2"})
    assert "objective.metric 'eval_f1' is not reported by stage classify" in _error(sweep, objective={"metric": "eval_f1"})
    assert "eval.held: file not found: nowhere.jsonl" in _error(sweep, eval={"held": "nowhere.jsonl"})
    assert "unknown key 'trails'; did you mean 'trials'?" in _error(sweep, trails=3)
    assert "base: run config file not found: missing.yaml" in _error(sweep, base="missing.yaml")


def test_a_storage_url_that_cannot_be_opened_is_named(sweep, tmp_path):
    config, _, _ = load_sweep({**sweep, "storage": f"sqlite:///{tmp_path}/no/such/dir/study.db"})
    with pytest.raises(TunelabError, match=r"storage 'sqlite:///.*' cannot be opened"):
        open_study(config)


def test_method_options_apply_only_to_the_method_that_has_them(sweep):
    space = {"method.name": {"choice": ["full", "lora"]}, "method.r": {"choice": [2, 4]},
             "train.lr": {"log_uniform": [1e-4, 1e-2]}}
    config, base, _ = load_sweep({**sweep, "space": space})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        params = suggest(study.ask(), config)
        seen.add(params["method.name"])
        assert ("method.r" in params) == (params["method.name"] == "lora"), params
        raw = apply_params(base, params)
        assert raw["method"]["name"] == params["method.name"]
        assert raw["method"].get("r") == params.get("method.r")
    assert seen == {"full", "lora"}


def test_grid_needs_choices(sweep):
    assert "sampler grid needs choice for every key (space.train.lr is not)" in _error(sweep, sampler="grid")


def test_the_schema_documents_every_field():
    assert all(field.description for name, field in SweepConfig.model_fields.items())


def test_shipped_sweep_files_validate():
    from conftest import EXAMPLES_DIR, REPO_ROOT
    import os

    paths = sorted((EXAMPLES_DIR / "sweep").glob("*.yaml"))
    assert paths
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the examples name data files relative to the repository root
    try:
        for path in paths:
            config, _, _ = load_sweep(path)
            assert 12 <= config.trials <= 20 and config.pruner != "none"
            assert all("test" not in file for file in config.eval.values())  # never tuned on the test split
    finally:
        os.chdir(cwd)


def test_the_cli_names_bad_input_in_one_line_and_writes_nothing(sweep, tmp_path):
    import yaml
    from conftest import run_cli

    bad = {**sweep, "space": {"train.lrr": {"uniform": [0.1, 0.2]}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    rc, out, err = run_cli("sweep", path)
    assert rc == 2 and err.strip().splitlines() == [
        f"error: {path}: space: unknown key 'train.lrr' for train; did you mean 'train.lr'?"], err
    assert not (tmp_path / "sweep").exists()
    rc, _, err = run_cli("sweep", "--report", tmp_path)
    assert rc == 2 and f"error: {tmp_path} is not a sweep directory (no sweep.json)" in err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sweep))
    rc, _, err = run_cli("sweep", good, "--trials", "0")
    assert rc == 2 and err.strip() == "error: --trials must be at least 1 (got 0)"
    assert not (tmp_path / "sweep").exists()
