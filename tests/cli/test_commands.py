"""README commands with no other test: `tunelab chat` (stdin), `tunelab config show`, `train --overwrite`.

Runs go through the CLI in a subprocess on tiny-llama and SYNTHETIC data (conftest).
"""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import EXAMPLES_DIR, tiny_config, write_config

import tunelab
from tunelab.config import load_config
from tunelab.core.errors import TunelabError


def test_chat_reads_turns_from_stdin_and_keeps_the_conversation(trained_run, monkeypatch):
    """`tunelab chat RUN` (in-process, stdin fed by typer's runner): one reply per line, the whole
    conversation so far goes to the model each turn, and an empty line ends the chat."""
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.runs.open import Loaded

    asked, plain = [], Loaded.generate

    def recording(self, prompt, *args, **kwargs):
        asked.append([dict(m) for m in prompt])
        return plain(self, prompt, *args, **kwargs)

    monkeypatch.setattr(Loaded, "generate", recording)
    run = trained_run("sft", "lora")
    result = CliRunner().invoke(app, ["chat", str(run), "--max-new-tokens", "4"],
                                input="What colour is snow?\nAnd grass?\n\nnever answered\n")
    assert result.exit_code == 0, result.output
    replies = [line.split("model> ", 1)[1] for line in result.output.splitlines() if "model> " in line]
    assert len(replies) == 2 and len(asked) == 2
    assert asked[0] == [{"role": "user", "content": "What colour is snow?"}]
    assert asked[1] == [{"role": "user", "content": "What colour is snow?"},
                        {"role": "assistant", "content": replies[0]},
                        {"role": "user", "content": "And grass?"}]
    assert replies[1] == plain(tunelab.load(run), asked[1], max_new_tokens=4)  # greedy: the same reply


def test_config_show_prints_the_fully_resolved_config(cli):
    config = EXAMPLES_DIR / "sft-demo.yaml"
    rc, out, err = cli("config", "show", config, "train.epochs=2", "method.r=8")
    assert rc == 0, err[-2000:]
    shown = yaml.safe_load(out)
    assert shown == load_config(config, ["train.epochs=2", "method.r=8"]).model_dump(mode="json")
    assert shown["train"]["epochs"] == 2 and shown["method"]["r"] == 8  # the overrides
    assert shown["train"]["weight_decay"] == 0.0 and shown["train"]["seed"] == 42  # defaults written out
    assert "weight_decay" not in (config.read_text())
    assert load_config(shown).model_dump(mode="json") == shown  # it is itself a valid config


def test_overwrite_replaces_an_existing_run_and_only_with_the_flag(tmp_path, synthetic_data, cli):
    out_dir = tmp_path / "runs"
    config = write_config(tmp_path / "run.yaml", tiny_config("sft", "lora", synthetic_data("dolly"), out_dir,
                                                             max_steps=2))
    run = tunelab.train(config, quiet=True)
    (run / "stale.txt").write_text("from before")
    first = json.loads((run / "summary.json").read_text())

    with pytest.raises(TunelabError, match=r"already exists.*--overwrite"):
        tunelab.train(config, ["train.max_steps=1"], quiet=True)
    assert json.loads((run / "summary.json").read_text()) == first  # refused: untouched

    rc, out, err = cli("train", config, "train.max_steps=1", "--overwrite", "--quiet")
    assert rc == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(run)
    assert not (run / "stale.txt").exists(), "--overwrite kept a file of the old run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 1, f"metrics.jsonl still holds the old run's records: {steps}"
