"""`make demo` and `make demo-sft`: the scripts they run, in their --smoke mode (tiny models, a few
rows of the bundled data, seconds), end to end in a subprocess as `make` runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES_DIR, REPO_ROOT


def _make_target(target: str) -> str:
    """The recipe line of a Makefile target."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert match, f"no target {target} in the Makefile"
    return match.group(1)


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_make_demo_runs_the_spam_shift_comparison(tmp_path):
    assert _make_target("demo").endswith("python examples/spam-shift/run.py")
    out = tmp_path / "spam-shift"
    keep = "majority,zero-shot,icl-4-nearest,lora-email,lora-sms,lora-sms-replay"
    proc = _run(str(EXAMPLES_DIR / "spam-shift" / "run.py"), "--smoke", "--only", keep, "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in result["rows"]] == keep.split(",")
    for row in result["rows"]:
        for test_set in ("email", "sms"):
            assert 0.0 <= row["tests"][test_set]["metrics"]["accuracy"] <= 1.0 and row["tests"][test_set]["n"] == 16
    assert (out / "report.html").is_file() and "Recommendation:" in proc.stdout
    # quiet by default: one line per approach on stderr, no raw Trainer log dicts anywhere
    assert "{'loss'" not in proc.stdout + proc.stderr and "'train_runtime'" not in proc.stdout + proc.stderr
    # the SMS runs start from the email run (init_from); replay mixes email back in
    sms = yaml.safe_load((out / "runs" / "lora-sms-replay" / "config.yaml").read_text())
    assert sms["init_from"] == str(out / "runs" / "lora-email") and sms["model"] == "tiny-bert"
    assert sms["data"]["replay"]["train"] == "data/spam/email_train.jsonl"
    replay = next(r for r in result["rows"] if r["name"] == "lora-sms-replay")
    assert replay["after"] == "lora-email" and replay["source_kept"] is None or replay["source_kept"] >= 0


def test_make_demo_sft_prints_held_out_loss_and_generations_before_and_after(tmp_path):
    assert _make_target("demo-sft").endswith("python examples/sft_demo.py")
    proc = _run(str(EXAMPLES_DIR / "sft_demo.py"), "--smoke", f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "=== tunelab SFT demo ===" in out and "model tiny-llama | method lora" in out
    loss = re.search(r"held-out loss\s+before (\d+\.\d+)\s+after (\d+\.\d+)", out)
    assert loss and "held-out perplexity" in out and "--- before ---" in out and "--- after ---" in out
    run_dir = out.strip().splitlines()[-1]
    assert run_dir == str(tmp_path / "demo-sft-lora-smollm2")
    metrics = json.loads((tmp_path / "demo-sft-lora-smollm2" / "summary.json").read_text())["metrics"]
    assert float(loss.group(1)) == pytest.approx(metrics["before_eval_loss"], abs=5e-5)
    assert float(loss.group(2)) == pytest.approx(metrics["eval_loss"], abs=5e-5)


@pytest.mark.parametrize("path", sorted(p.relative_to(EXAMPLES_DIR) for p in EXAMPLES_DIR.rglob("*.yaml")
                                        if p.parent.name == "medical" or p.name == "compare.yaml"), ids=str)
def test_shipped_compare_files_validate(path):
    """Every shipped comparison loads: its keys, approaches and run configs are valid (nothing runs)."""
    from tunelab.comparison import load_compare_config

    cfg, approaches = load_compare_config(EXAMPLES_DIR / path)
    assert approaches and all(Path(file).is_file() for file in (REPO_ROOT / f for f in cfg.data.test.values()))
