"""`tunelab eval` and `tunelab zeroshot` end to end on tiny models, and their bad-input errors.

Every dataset here is SYNTHETIC (made-up sentences written by the test into tmp_path).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows
from tunelab import TunelabError
from tunelab.evaluate import evaluate, parse_data_args

SPAM = ["win a free prize now", "cheap pills click here", "urgent claim your cash", "free entry text WIN"]
HAM = ["see you at lunch", "meeting moved to 3pm", "thanks for the notes", "call me when home"]


def _labelled(n: int, labels=("ham", "spam")) -> list[dict]:  # SYNTHETIC
    pools = {"ham": HAM, "spam": SPAM}
    return [{"text": f"{pools.get(labels[i % len(labels)], HAM)[i % 4]} {i}", "label": labels[i % len(labels)]}
            for i in range(n)]


def _classify_config(tmp_path: Path, model: str, method: str = "lora", name: str | None = None) -> Path:
    data = write_rows(tmp_path / "train.jsonl", _labelled(16))
    config = tiny_config("classify", method, data, tmp_path / "runs", max_length=16)
    config["model"] = model
    config["name"] = name or f"cls-{model}"
    return write_config(tmp_path / f"{config['name']}.yaml", config)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A tiny-bert classify run trained through the CLI (shared by the tests below)."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("bert")
    rc, out, err = run_cli("train", _classify_config(tmp, "tiny-bert"), "--quiet")
    assert rc == 0, err[-2000:]
    return Path(out.strip().splitlines()[-1])


def _one_line_error(rc: int, err: str, fragment: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert rc == 2, err[-2000:]
    assert len(lines) == 1 and fragment in lines[0], err[-2000:]


def test_cli_train_and_eval_two_test_sets(bert_run, tmp_path, cli, cli_here):
    a = write_rows(tmp_path / "a.jsonl", _labelled(6))
    b = write_rows(tmp_path / "b.csv", _labelled(5))
    rc, out, err = cli("eval", bert_run, "--data", f"alpha={a}", "--data", f"beta={b}")
    assert rc == 0, err[-2000:]
    assert "alpha" in out and "beta" in out and "F1(spam)" in out and "confusion matrix" in out
    report = json.loads((bert_run / "eval" / "alpha.json").read_text())
    assert report["n"] == 6 and report["labels"] == ["ham", "spam"] and report["positive"] == "spam"
    assert sum(map(sum, report["confusion_matrix"])) == 6 and 0 <= report["roc_auc"] <= 1
    assert (bert_run / "eval" / "beta_confusion.png").stat().st_size > 0

    rc, out, err = cli_here("eval", bert_run, "--data", f"alpha={a}", "--threshold", "0", "--json")
    assert rc == 0, err[-2000:]
    result = json.loads(out)  # --json: stdout is JSON only
    alpha = result["data"]["alpha"]
    assert alpha["threshold"] == 0.0 and alpha["per_class"]["spam"]["recall"] == 1.0  # everything called spam
    assert alpha["confusion_matrix"][0][0] == 0


def test_cli_train_and_eval_tiny_llama(tmp_path, cli):
    rc, out, err = cli("train", _classify_config(tmp_path, "tiny-llama", method="head"), "--quiet")
    assert rc == 0, err[-2000:]
    run = Path(out.strip().splitlines()[-1])
    test = write_rows(tmp_path / "test.jsonl", _labelled(6))
    rc, out, err = cli("eval", run, "--data", f"t={test}", "--json")
    assert rc == 0, err[-2000:]
    assert json.loads(out)["data"]["t"]["n"] == 6


def test_eval_of_a_language_model_run(trained_run, tmp_path):
    run = trained_run("sft", "lora")
    data = write_rows(tmp_path / "d.jsonl", SYNTHETIC_ROWS["dolly"])
    result = evaluate(run, {"dolly": str(data)})
    report = result["data"]["dolly"]
    assert report["task"] == "causal-lm" and report["tokens"] > 0
    assert report["perplexity"] == pytest.approx(torch.tensor(report["loss"]).exp().item(), rel=1e-6)
    assert (run / "eval" / "dolly.json").exists()


def test_zeroshot_baseline_on_tiny_llama(tmp_path, cli_here):
    from tunelab.baselines.zeroshot import ZeroShotClassifier, ZeroShotConfig
    from tunelab.models import load_model

    out = tmp_path / "runs" / "zs"
    rc, stdout, err = cli_here("zeroshot", "--model", "tiny-llama", "--labels", "ham,spam", "--out", out,
                          "--label-word", "ham=no", "--label-word", "spam=yes")
    assert rc == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "zeroshot" and summary["trainable_params"] == 0
    test = write_rows(tmp_path / "test.jsonl", _labelled(6))
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--json")
    assert rc == 0, err[-2000:]
    assert json.loads(stdout)["data"]["t"]["n"] == 6

    # The one-pass path (one-token words) scores exactly what the general path does.
    model, tokenizer = load_model("tiny-llama")
    clf = ZeroShotClassifier(ZeroShotConfig(model="tiny-llama", labels=["ham", "spam"],
                                            label_words={"ham": "no", "spam": "yes"}), model, tokenizer)
    prompts = [clf.prompt_ids(row["text"]) for row in _labelled(3)]
    fast = clf._answer_scores(prompts, None)
    slow = torch.stack([clf._answer_scores(prompts, ids) for ids in clf.word_ids], dim=1)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    probs = clf.predict_proba([row["text"] for row in _labelled(3)])
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    multi = ZeroShotClassifier(ZeroShotConfig(model="tiny-llama", labels=["ham", "spam"],
                                              label_words={"ham": "not spam at all"}), model, tokenizer)
    assert multi.predict_proba(["hello there"]).shape == (1, 2)


def test_parse_data_args():
    assert parse_data_args(["email=e.jsonl", "x/sms.csv"]) == {"email": "e.jsonl", "sms": "x/sms.csv"}
    with pytest.raises(TunelabError, match="given twice"):
        parse_data_args(["a=1.jsonl", "a=2.jsonl"])
    with pytest.raises(TunelabError, match="may use only"):
        parse_data_args(["a b=1.jsonl"])


# --------------------------------------------------------------------------- bad input, via the CLI


def test_eval_file_with_labels_the_model_never_saw(bert_run, tmp_path, cli_here):
    bad = write_rows(tmp_path / "bad.jsonl", _labelled(4, labels=("ham", "eggs")))
    rc, _, err = cli_here("eval", bert_run, "--data", f"x={bad}")
    _one_line_error(rc, err, "has labels ['eggs'] the model never saw")


def test_eval_file_without_a_label_column(bert_run, tmp_path, cli_here):
    bad = write_rows(tmp_path / "nolabel.jsonl", [{"text": "hello"}, {"text": "bye"}])
    rc, _, err = cli_here("eval", bert_run, "--data", f"x={bad}")
    _one_line_error(rc, err, "field 'label' is missing")


def test_empty_test_file(bert_run, tmp_path, cli_here):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, _, err = cli_here("eval", bert_run, "--data", f"x={empty}")
    _one_line_error(rc, err, "is empty")


def test_train_without_label_column_or_with_one_class(tmp_path, cli_here):
    config = _classify_config(tmp_path, "tiny-bert", name="nolabel")
    nolabel = write_rows(tmp_path / "nolabel.jsonl", [{"text": f"row {i}"} for i in range(8)])
    rc, _, err = cli_here("train", config, f"data.train={nolabel}")
    _one_line_error(rc, err, "field 'label' is missing")
    one = write_rows(tmp_path / "one.jsonl", _labelled(8, labels=("ham",)))
    rc, _, err = cli_here("train", config, f"data.train={one}")
    _one_line_error(rc, err, "a classifier needs at least two classes")


def test_init_from_incompatible_run_via_cli(bert_run, tmp_path, cli_here):
    config = _classify_config(tmp_path, "tiny-llama", name="other-model")
    rc, _, err = cli_here("train", config, f"init_from={bert_run}")
    _one_line_error(rc, err, "was trained from model 'tiny-bert', this run uses 'tiny-llama'")
    config = _classify_config(tmp_path, "tiny-bert", name="other-labels")
    other = write_rows(tmp_path / "other.jsonl", _labelled(8, labels=("ham", "eggs")))
    rc, _, err = cli_here("train", config, f"init_from={bert_run}", f"data.train={other}")
    _one_line_error(rc, err, "labels ['eggs'] not in the labels of run")


def test_head_with_a_generative_stage(tiny_run_config, cli_here):
    rc, _, err = cli_here("train", tiny_run_config("sft", "full"), "method=head")
    _one_line_error(rc, err, "method 'head' trains a task head on frozen features; it needs stage classify")


def test_threshold_on_a_language_model_run(trained_run, tmp_path, cli_here):
    data = write_rows(tmp_path / "d.jsonl", SYNTHETIC_ROWS["dolly"])
    rc, _, err = cli_here("eval", trained_run("sft", "lora"), "--data", f"d={data}", "--threshold", "0.3")
    _one_line_error(rc, err, "does not apply to a sft run")
