"""`make demo` and `make demo-sft`: the scripts they run, in their --smoke mode (tiny models, a few
rows of the bundled data, seconds), end to end in a subprocess as `make` runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import EXAMPLES_DIR, REPO_ROOT


def _make_target(target: str) -> str:
    """The recipe line of a Makefile target."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert match, f"no target {target} in the Makefile"
    return match.group(1)


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_make_demo_runs_the_spam_shift_scenario(tmp_path):
    assert _make_target("demo").endswith("python examples/spam-shift/run.py")
    out = tmp_path / "spam-shift"
    proc = _run(str(EXAMPLES_DIR / "spam-shift" / "run.py"), "--smoke", "--methods", "head,lora", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["method"], r["trained_on"]) for r in rows] == [
        ("zero-shot", "none (tiny-llama)"), ("head", "email"), ("head", "email + 200 sms"),
        ("lora", "email"), ("lora", "email + 200 sms")]
    for row in rows:
        for test_set in ("email", "sms"):
            assert 0.0 <= row[test_set]["accuracy"] <= 1.0 and row[test_set]["n"] > 0
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].startswith("spam-shift, smoke profile, backbone tiny-bert") and table.strip() in proc.stdout
    # the SMS run starts from the email run (init_from), as the scenario says
    sms_config = (out / "sms-lora" / "config.yaml").read_text()
    assert f"init_from: {out / 'email-lora'}" in sms_config and "model: tiny-bert" in sms_config


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
