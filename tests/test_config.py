"""The typed run config: YAML, dotted overrides, errors that name the key and suggest a fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES_DIR

from tunelab.config import RunConfig, load_config
from tunelab.core.errors import TunelabError

BASE = {"model": "tiny-llama", "stage": "sft", "method": "full", "data": {"train": "train.jsonl"}}


def _error(source, overrides=()) -> str:
    with pytest.raises(TunelabError) as info:
        load_config(source, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- loading and overrides


def test_yaml_loads_with_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: tiny-llama\nstage: sft\nmethod: {name: lora, r: 8}\ndata: {train: d.jsonl}\n"
                    "train: {epochs: 2, lr: 1e-3}\n")
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert (cfg.stage.name, cfg.method.name, cfg.method.r) == ("sft", "lora", 8)
    assert cfg.train.epochs == 2.0 and cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.method.alpha == 32 and cfg.train.batch_size == 4  # untouched defaults
    assert cfg.name == "sft-lora-tiny-llama"
    assert cfg.run_dir == Path("runs") / "sft-lora-tiny-llama"


def test_dotted_overrides_apply():
    cfg = load_config(BASE, ["method=lora", "train.epochs=1", "method.r=8", "method.target_modules=[q_proj,v_proj]",
                             "data.fields.response=answer", "name=my-run"])
    assert cfg.method.name == "lora" and cfg.method.r == 8
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.epochs == 1.0
    assert cfg.data.fields == {"response": "answer"}
    assert cfg.name == "my-run"


def test_override_on_method_shorthand_expands_it():
    # `method: lora` in the file, `method.r=8` on the command line.
    cfg = load_config({**BASE, "method": "lora"}, ["method.r=8"])
    assert (cfg.method.name, cfg.method.r) == ("lora", 8)


def test_overrides_do_not_mutate_the_callers_dict():
    source = {**BASE, "train": {"epochs": 3}}
    load_config(source, ["train.epochs=1"])
    assert source["train"] == {"epochs": 3}


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(BASE, ["method=lora", "method.r=4"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("override, named, suggested", [
    ("train.epoch=1", "train.epoch", "train.epochs"),
    ("data.fromat=text", "data.fromat", "data.format"),
    ("nme=x", "nme", "name"),
])
def test_misspelt_key_is_named_with_nearest_suggestion(override, named, suggested):
    message = _error(BASE, [override])
    assert f"'{named}'" in message and f"did you mean '{suggested}'" in message


def test_misspelt_method_option_suggests_nearest():
    message = _error(BASE, ["method=lora", "method.rr=3"])
    assert "'method.rr'" in message and "did you mean 'method.r'" in message


def test_option_of_another_method_is_explained():
    message = _error(BASE, ["method.r=8"])  # r is a LoRA option; the method is full
    assert "'method.r'" in message and "'full'" in message and "lora" in message


def test_misspelt_key_in_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"max_lenght": 64}}))
    message = _error(path)
    assert str(path) in message and "'train.max_lenght'" in message and "'train.max_length'" in message


@pytest.mark.parametrize("override, field, value", [
    ("train.epochs=abc", "train.epochs", "'abc'"),
    ("train.batch_size=0", "train.batch_size", "0"),
    ("train.precision=fp16", "train.precision", "'fp16'"),
    ("method.r=many", "method.r", "'many'"),
])
def test_wrong_type_names_field_and_value(override, field, value):
    overrides = ["method=lora", override] if override.startswith("method.") else [override]
    message = _error(BASE, overrides)
    assert message.split(": ", 1)[1].startswith(f"{field}:") and f"(got {value})" in message


@pytest.mark.parametrize("override, expected", [
    ("method=lorra", "unknown method 'lorra' (did you mean 'lora'?)"),
    ("stage=sfft", "unknown stage 'sfft' (did you mean 'sft'?)"),
])
def test_unknown_method_or_stage_name(override, expected):
    message = _error(BASE, [override])
    assert expected in message and "choose from" in message


def test_missing_required_key():
    source = {k: v for k, v in BASE.items() if k != "model"}
    assert "missing required key 'model'" in _error(source)
    assert "missing required key 'data.train'" in _error({**BASE, "data": {}})


def test_misspelt_required_key_is_named_rather_than_missing():
    message = _error({**BASE, "data": {"trian": "x.jsonl"}})  # pydantic also reports data.train as missing
    assert "unknown key 'data.trian'" in message and "did you mean 'data.train'" in message


def test_a_mix_round_trips_through_yaml(tmp_path):
    cfg = load_config({**BASE, "data": {"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 0.2}],
                                        "replay": {"train": "c.jsonl", "max_rows": 5}}})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: tiny-llama\nstage: sft\nmethod: {name: lora\ndata: {train: x}\n")
    message = _error(path)
    assert message.startswith(f"bad YAML in {path}") and "line" in message


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- stage\n")
    assert "expected a mapping" in _error(path)


def test_missing_config_file(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_override_without_equals():
    assert "is not KEY=VALUE" in _error(BASE, ["train.epochs"])


# --------------------------------------------------------------------------- schema and shipped configs


def test_config_schema_cli_prints_json_schema(cli):
    rc, out, err = cli("config", "schema")
    assert rc == 0, err
    schema = json.loads(out)
    assert schema["title"] == "RunConfig"
    assert {"model", "stage", "method", "data", "train", "output_dir"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"model", "stage", "method", "data"}
    # Field descriptions reach the schema (they are the documentation).
    assert schema["$defs"]["TrainConfig"]["properties"]["lr"]["description"]


# Run configs; comparison files (a top-level `approaches:` list) are validated in test_examples.py.
# Run configs only: compare files (approaches:) and sweep files (space:, tests/sweep) have their own tests.
SHIPPED = sorted(p for p in EXAMPLES_DIR.glob("**/*.yaml")
                 if not {"approaches", "space"} & set(yaml.safe_load(p.read_text()) or {}))


def test_examples_exist():
    assert SHIPPED, "no example configs found under examples/"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(EXAMPLES_DIR).as_posix() for p in SHIPPED])
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.model and cfg.data.train


def test_shorthand_override_after_dotted_keys_keeps_them_and_still_checks_them(tmp_path):
    from tunelab.config import load_config
    from tunelab.core.errors import TunelabError

    base = {"model": "tiny-llama", "stage": "sft", "method": "full", "data": {"train": "x.jsonl"}}
    cfg = load_config(base, ["method.r=8", "method=lora"])
    assert cfg.method.name == "lora" and cfg.method.r == 8
    with pytest.raises(TunelabError, match="alpah"):
        load_config(base, ["method.alpah=3", "method=lora"])


def test_config_imports_and_validates_without_torch():
    """Validating a config (the CLI's first step; a server checking a job) must not pay for torch."""
    import subprocess
    import sys

    code = ("import sys, tunelab.config as c; "
            "c.load_config({'model': 'tiny-llama', 'stage': 'sft', 'method': {'name': 'lora', 'r': 4}, "
            "'data': {'train': 'x.jsonl'}}); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'numpy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_overrides_reach_an_item_of_a_list_of_sources():
    base = {**BASE, "data": {"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 0.1}]}}
    cfg = load_config(base, ["data.train[1].fraction=0.3", "data.train.0.max_rows=4"])
    assert (cfg.data.train[0].path, cfg.data.train[0].max_rows, cfg.data.train[1].fraction) == ("a.jsonl", 4, 0.3)
    assert "'5' is not an item of a list of 2" in _error(base, ["data.train[5].fraction=0.3"])
