"""Bad input through the CLI (issue 2, point 9): one `error:` line on stderr, exit 2, no traceback,
and no half-written run directory left behind. Data is SYNTHETIC (conftest)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows


def assert_user_error(rc: int, stdout: str, stderr: str, *fragments: str) -> str:
    """Exit 2, no traceback, and stderr ends in exactly one `error: ...` line holding every fragment."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2, f"exit code {rc}\n{stderr[-3000:]}"
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert stdout.strip() == "", "nothing (in particular no run directory) may be printed on stdout"
    return lines[-1]


def assert_no_run_left(out_dir: Path) -> None:
    leftovers = [p for p in out_dir.iterdir() if p.name != "runs.sqlite"] if out_dir.exists() else []
    assert not leftovers, f"half-written run left behind: {leftovers}"


@pytest.fixture
def train_cli(cli, tmp_path, out_dir, synthetic_data):
    """Train tiny-llama SFT-LoRA with the given data file and overrides; return (rc, out, err)."""

    def run(data: Path | str | None = None, *overrides: str, stage: str = "sft"):
        data = data or synthetic_data("text" if stage == "pretrain" else "dolly")
        config = write_config(tmp_path / "run.yaml", tiny_config(stage, "lora", data, out_dir))
        return cli("train", config, *overrides, "--quiet")

    return run


def test_missing_data_file(train_cli, tmp_path, out_dir):
    assert_user_error(*train_cli(tmp_path / "nope.jsonl"), "data file not found", "nope.jsonl")
    assert_no_run_left(out_dir)


def test_empty_dataset(train_cli, tmp_path, out_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(*train_cli(empty), "empty.jsonl", "is empty")
    assert_no_run_left(out_dir)


def test_required_field_missing_names_field_and_row(train_cli, tmp_path, out_dir):
    rows = [dict(row) for row in SYNTHETIC_ROWS["dolly"]]
    del rows[4]["response"]
    data = write_rows(tmp_path / "holes.jsonl", rows)
    assert_user_error(*train_cli(data), "row 5", "'response'")
    assert_no_run_left(out_dir)


def test_missing_config_file(cli, tmp_path):
    assert_user_error(*cli("train", tmp_path / "nope.yaml"), "config file not found", "nope.yaml")


def test_bad_yaml(cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: tiny-llama\nstage: sft\nmethod: [lora\n")
    assert_user_error(*cli("train", config), "bad YAML", "line")


def test_misspelt_config_key(train_cli, out_dir):
    assert_user_error(*train_cli(None, "train.epoch=1"), "'train.epoch'", "did you mean 'train.epochs'")
    assert_no_run_left(out_dir)


def test_unknown_model_name(train_cli, out_dir):
    assert_user_error(*train_cli(None, "model=tiny-lama"), "'tiny-lama'", "did you mean 'tiny-llama'")
    assert_no_run_left(out_dir)


def test_hub_unreachable(train_cli, out_dir):
    # conftest sets HF_HUB_OFFLINE=1: a Hub id cannot be fetched, and the message must say why.
    assert_user_error(*train_cli(None, "model=someorg/some-model"), "'someorg/some-model'", "offline")
    assert_no_run_left(out_dir)


def test_output_dir_under_a_regular_file(train_cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_user_error(*train_cli(None, f"output_dir={blocker / 'runs'}"), "not writable")
    assert blocker.read_text() == "not a directory"


def test_output_dir_without_write_permission(train_cli, tmp_path):
    if os.geteuid() == 0:  # root ignores chmod (CI runs as root): nobody can create anything under /proc
        assert_user_error(*train_cli(None, "output_dir=/proc/tunelab-locked/runs"), "not writable", "/proc")
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert_user_error(*train_cli(None, f"output_dir={locked}"), "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_max_length_too_small_for_any_example(train_cli, out_dir):
    # The chat template's prompt alone is longer than 8 tokens: no reply token survives truncation.
    assert_user_error(*train_cli(None, "train.max_length=8"), "max_length=8", "too small")
    assert_no_run_left(out_dir)


def test_wrong_format_for_stage(train_cli, synthetic_data, out_dir):
    assert_user_error(*train_cli(synthetic_data("preference")), "format 'preference'", "instruction, messages")
    assert_no_run_left(out_dir)


def test_data_inspect_missing_file(cli, tmp_path):
    assert_user_error(*cli("data", "inspect", tmp_path / "nope.csv", "--model", "tiny-llama"), "data file not found")


def test_generate_unknown_model(cli):
    assert_user_error(*cli("generate", "tiny-lama", "hi"), "did you mean 'tiny-llama'")
