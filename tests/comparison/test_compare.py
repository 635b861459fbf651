"""`tunelab compare` end to end on tiny models and SYNTHETIC data: resume, report, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SYNTHETIC_ROWS, run_cli, write_rows

from tunelab import TunelabError
import tunelab
from tunelab.comparison import load_compare_config

# SYNTHETIC two-domain "spam" rows: the words differ between domains, as email and SMS do.
_SPAM, _HAM = ["win", "prize", "free", "cash"], ["meeting", "lunch", "report", "call"]


def _domain(prefix: str, n: int) -> list[dict]:
    return [{"text": f"{prefix} {(_SPAM if i % 3 == 0 else _HAM)[i % 4]} {i}", "label": "spam" if i % 3 == 0 else "ham"}
            for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    for name, prefix, n in (("email_train", "mail", 24), ("email_test", "mail", 9), ("sms_train", "txt", 12),
                            ("sms_test", "txt", 9)):
        write_rows(root / f"{name}.jsonl", _domain(prefix, n))
    write_rows(root / "general.jsonl", SYNTHETIC_ROWS["text"])
    return root


def _spec(world: Path, out: Path, **extra) -> dict:
    spec = {
        "name": "tiny-shift", "output_dir": str(out),
        "data": {"train": str(world / "email_train.jsonl"),
                 "test": {"email": str(world / "email_test.jsonl"), "sms": str(world / "sms_test.jsonl")}},
        "primary": "sms", "forgetting": {"source": "email"},
        "defaults": {"model": "tiny-bert", "stage": "classify",
                     "train": {"max_steps": 2, "batch_size": 8, "eval_before": False, "save_steps": 0}},
        "approaches": [
            {"name": "majority", "kind": "majority"},
            {"name": "zero-shot", "kind": "zeroshot", "model": "tiny-llama", "labels": ["ham", "spam"],
             "test_rows": {"sms": 6}},
            {"name": "head", "method": "head"},
            {"name": "head-sms", "after": "head", "method": "head", "data": {"train": str(world / "sms_train.jsonl")}},
        ],
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory) -> tuple[dict, dict]:
    """One comparison, run through the CLI; (its spec, compare.json)."""
    out = tmp_path_factory.mktemp("compare-out") / "cmp"
    spec = _spec(world, out)
    file = world / "cmp.yaml"
    file.write_text(yaml.safe_dump(spec))
    code, stdout, stderr = run_cli("compare", str(file))
    assert code == 0, stderr
    assert "Recommendation:" in stdout and "head-sms" in stdout
    assert "sms: 9 rows scored (6 for zero-shot)." in stdout
    return spec, json.loads((out / "compare.json").read_text())


def test_every_approach_has_a_row_with_every_figure(finished):
    spec, result = finished
    assert [r["name"] for r in result["rows"]] == ["majority", "zero-shot", "head", "head-sms"]
    for row in result["rows"]:
        assert set(row["tests"]) == {"email", "sms"}
        for name, test in row["tests"].items():
            assert test["n"] == (6 if (row["name"], name) == ("zero-shot", "sms") else 9)
            assert test["value"] is not None and test["latency_ms"] > 0
    majority, zero, head, head_sms = result["rows"]
    # always "ham", the majority of the (shared) training data: accuracy = the test set's ham share
    assert majority["tests"]["sms"]["metrics"]["accuracy"] == pytest.approx(6 / 9) and majority["tests"]["sms"]["value"] == 0.0
    assert zero["trainable_params"] == 0 and zero["train_seconds"] == 0.0
    assert head["trainable_params"] > 0 and head["train_seconds"] > 0 and head["peak_rss_mb"] > 0
    assert head_sms["after"] == "head" and head_sms["trainable_percent"] == head["trainable_percent"]
    # the continued run started from head's weights (init_from), as a real shift scenario does
    config = yaml.safe_load(Path(head_sms["run_dir"], "config.yaml").read_text())
    assert config["init_from"] == head["run_dir"]
    out = Path(spec["output_dir"])
    for name in ("report.html", "compare.md", "metric_vs_trainable.png", "metric_vs_time.png", "forgetting_vs_gain.png"):
        assert (out / name).stat().st_size > 0, name
    assert result["recommendation"] and result["machine"]["cores"] >= 1


def test_a_second_compare_trains_and_scores_nothing(finished):
    spec, first = finished
    out = Path(spec["output_dir"])
    stamps = {p: p.stat().st_mtime_ns for p in list(out.glob("runs/*/summary.json")) + list(out.glob("evals/*/*.json"))}
    logs = {p: p.stat().st_mtime_ns for p in out.glob("logs/*.log")}
    again = tunelab.compare(spec)  # the Python API
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run retrained, no eval redone
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # no training process started
    assert [r["tests"] for r in again["rows"]] == [r["tests"] for r in first["rows"]]


def test_a_changed_approach_retrains_only_itself_and_what_follows_it(finished, tmp_path):
    spec, _ = finished
    copy = tmp_path / "cmp"
    shutil.copytree(spec["output_dir"], copy)
    changed = json.loads(json.dumps(spec))
    changed["output_dir"] = str(copy)
    changed["approaches"][2]["train"] = {"lr": 1e-3}  # head changes; head-sms starts from it
    before = {p.parent.name: p.stat().st_mtime_ns for p in copy.glob("runs/*/summary.json")}
    tunelab.compare(changed)
    after = {p.parent.name: p.stat().st_mtime_ns for p in copy.glob("runs/*/summary.json")}
    assert after["zero-shot"] == before["zero-shot"]
    assert after["head"] != before["head"] and after["head-sms"] != before["head-sms"]


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian chromium + chromium-driver are not installed (`make test` installs them)")
def test_the_report_renders_in_headless_chromium_with_its_plots(finished, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    spec, result = finished
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((Path(spec["output_dir"]) / "report.html").resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [r["name"] for r in result["rows"]]
        images = driver.find_elements(By.CSS_SELECTOR, "figure img")
        assert len(images) == 3
        for image in images:  # decoded: the embedded PNG is real and the browser drew it
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 100
        sentences = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#recommendation li")]
        assert sentences == result["recommendation"]
        assert result["machine_line"] in driver.find_element(By.ID, "machine").text
    finally:
        driver.quit()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["approaches"][2].update(metod="lora"), "unknown key 'metod'"),
    (lambda s: s["approaches"][2].update(kind="lroa"), "unknown kind 'lroa'"),
    (lambda s: s["approaches"][3].update(after="nobody"), "after 'nobody' is not an approach listed before it"),
    (lambda s: s["approaches"][3].update(after="zero-shot"), "is a baseline"),
    (lambda s: s["approaches"].append({"name": "head", "method": "head"}), "the name is used twice"),
    (lambda s: s["approaches"][1].update(labls=["a", "b"]), "unknown key 'labls' for a zeroshot baseline; did you mean 'labels'?"),
    (lambda s: s.update(primry="sms"), "unknown key 'primry'; did you mean 'primary'?"),
    (lambda s: s.update(primary="tweets"), "primary 'tweets' is not a test set"),
    (lambda s: s["data"].update(test={}), "give at least one test set"),
    (lambda s: s["approaches"][2].update(train={"lrr": 1}), "did you mean 'train.lr'?"),
    (lambda s: s["approaches"][1].update(test_rows={"tweets": 3}), "test_rows names 'tweets', which is not a test set"),
    (lambda s: s["approaches"][1].update(test_rows=0), "test_rows must be a positive number of rows (got 0)"),
])
def test_bad_compare_files_are_refused_before_anything_runs(world, tmp_path, change, message):
    spec = _spec(world, tmp_path / "never")
    change(spec)
    with pytest.raises(TunelabError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_compare_config(spec)
    assert not (tmp_path / "never").exists()
