"""What `tunelab train` prints: a progress line and a summary by default, the raw per-step log records only
with -v (always in RUN/train.log), only the run directory with --quiet. SYNTHETIC data (conftest)."""
from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows

from tunelab.core.errors import TunelabError
from tunelab.training.progress import ProgressLine, format_duration, format_log

RAW = "{'loss':"  # how the Trainer's per-step records looked on the terminal


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny-bert classify run (3 steps, an eval at the end) per output mode: {mode: (rc, out, err, run_dir)}."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("output")
    data = write_rows(root / "cls.jsonl", SYNTHETIC_ROWS["classification"])
    results = {}
    for mode, flags in {"default": (), "verbose": ("-v",), "quiet": ("--quiet",)}.items():
        config = tiny_config("classify", "lora", data, root / "runs")
        config.update(model="tiny-bert", name=f"out-{mode}")
        rc, out, err = run_cli("train", write_config(root / f"{mode}.yaml", config), *flags)
        results[mode] = (rc, out, err, root / "runs" / f"out-{mode}")
    return results


def test_default_output_is_a_progress_line_and_a_summary(runs):
    rc, out, err, run = runs["default"]
    assert rc == 0, err[-3000:]
    assert out.splitlines() == [str(run)]  # stdout: the run directory alone
    assert RAW not in out + err and "{'eval_loss'" not in err
    assert "Loading weights" not in err and "it/s]" not in err  # no library progress bars
    progress = [line for line in err.splitlines() if "step " in line]
    assert progress[-1].startswith("out-default (classify, lora)  step 3/3  loss ")  # not a TTY: a line per ~10%
    assert "elapsed" in progress[-1] and "left" in progress[0]
    assert err.splitlines()[-1].startswith("done out-default: 3 steps in ")
    assert "eval_loss" in err.splitlines()[-1]


def test_verbose_brings_back_the_raw_records(runs):
    rc, out, err, run = runs["verbose"]
    assert rc == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(run)
    assert err.count(RAW) == 3 and "{'eval_loss'" in err  # on stderr, as the Trainer formatted them
    assert "Loading weights" in err  # the libraries' own output too


def test_quiet_prints_nothing_but_the_run_directory(runs):
    rc, out, err, run = runs["quiet"]
    assert rc == 0, err[-3000:]
    assert out.splitlines() == [str(run)] and err.strip() == ""


@pytest.mark.parametrize("mode", ["default", "verbose", "quiet"])
def test_train_log_has_every_record_and_metrics_jsonl_is_unchanged(runs, mode):
    _, _, err, run = runs[mode]
    logged = [ast.literal_eval(line) for line in (run / "train.log").read_text().splitlines()]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logged) == 3 and any("eval_loss" in r for r in logged)
    assert len(logged) == len(records)  # one line per record, the same records
    for line, record in zip(logged, records):
        assert set(line) == set(record) - {"step", "total_flos"}  # metrics.jsonl adds the step, keeps total_flos
        assert all(line[k] == (f"{v:.4g}" if isinstance(v, float) else v) for k, v in record.items() if k in line)
    if mode == "verbose":
        assert [l for l in err.splitlines() if l.startswith("{")] == (run / "train.log").read_text().splitlines()


def test_quiet_and_verbose_at_once_is_an_error(tmp_path):
    import tunelab

    with pytest.raises(TunelabError, match="quiet and verbose"):
        tunelab.train({"model": "tiny-bert", "stage": "classify", "method": "full", "data": {"train": "x.jsonl"}},
                      quiet=True, verbose=True)


# --------------------------------------------------------------------------- the progress line itself


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_on_a_terminal_rewrites_one_line(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("tunelab.training.progress.time.monotonic", clock)
    stream = io.StringIO()
    line = ProgressLine("run (sft, lora)", stream, tty=True)
    for step in range(1, 5):
        clock.now += 10
        line.update(step, 4, loss=1.0 / step)
    line.write("{'loss': '0.25'}")
    line.close()
    text = stream.getvalue()
    assert text.count("\n") == 2  # the record written above the line, and the line's end
    assert text.count("\r") >= 4 and "run (sft, lora)  step 4/4  loss 0.25  0:40 elapsed" in text
    assert "step 2/4  loss 0.5  0:20 elapsed, 0:20 left" in text  # 10 s a step, 2 to go


def test_progress_elsewhere_prints_a_line_every_tenth():
    stream = io.StringIO()
    line = ProgressLine("run", stream, tty=False)
    for step in range(1, 101):
        line.update(step, 100, loss=0.5)
    line.close()
    lines = stream.getvalue().splitlines()
    assert [l.split("  ")[1] for l in lines] == [f"step {n}/100" for n in range(10, 101, 10)]


def test_formatting():
    assert format_duration(5) == "0:05" and format_duration(125) == "2:05" and format_duration(3725) == "1:02:05"
    assert format_log({"loss": 0.123456, "total_flos": 1.0, "num_input_tokens_seen": 14}) == \
        "{'loss': '0.1235', 'num_input_tokens_seen': 14}"
