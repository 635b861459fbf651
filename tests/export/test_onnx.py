"""`tunelab export --format onnx`: onnxruntime + tokenizers alone classify like the run, and the refusals.

Training rows are REAL: the first rows of data/spam/sms_train_200.jsonl; the compared predictions are
on real test rows of data/spam/sms_test.jsonl and data/spam/email_test.jsonl (the test splits, see
data/spam/README.md). Each run trains a few steps in this process, once per module.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SYNTHETIC_ROWS, write_rows
from tunelab.export import ExportOptions, export_run

SPAM = REPO_ROOT / "data" / "spam"
TINY_BERT_METHODS = ["full", "freeze", "lora", "head", "adapter", "ia3"]
METHOD_SETTINGS = {"lora": {"r": 4, "alpha": 8}, "freeze": {"k": 1}}  # small, and freeze keeps a block frozen


def _test_texts(n_sms: int = 40, n_email: int = 8) -> list[str]:
    """Real test rows: short SMS and long emails (these pass max_length and are truncated)."""
    rows = []
    for name, n in (("sms_test.jsonl", n_sms), ("email_test.jsonl", n_email)):
        with (SPAM / name).open() as handle:
            rows += [json.loads(next(handle))["text"] for _ in range(n)]
    return rows


def _train(root: Path, model: str, stage: dict, method: dict, data: Path, max_length: int = 32) -> Path:
    import tunelab

    name = f"{model}-{stage['name']}-{method['name']}"
    return tunelab.train({
        "model": model, "stage": stage, "method": method, "name": name,
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"max_steps": 2, "batch_size": 8, "max_length": max_length, "lr": 1e-3, "warmup_ratio": 0.0,
                  "save_steps": 0, "eval_before": False},
        "output_dir": str(root / "runs")}, quiet=True)


@pytest.fixture(scope="module")
def spam_rows(tmp_path_factory) -> Path:
    """The first 64 real SMS training rows (both labels occur)."""
    lines = (SPAM / "sms_train_200.jsonl").read_text().splitlines()[:64]
    path = tmp_path_factory.mktemp("spam") / "sms_train_64.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spam_rows):
    """Factory: (model, method) -> a classify run, trained once per module."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(model: str, method: str) -> Path:
        if (model, method) not in cache:
            spec = {"name": method, **METHOD_SETTINGS.get(method, {})}
            cache[(model, method)] = _train(root, model, {"name": "classify"}, spec, spam_rows)
        return cache[(model, method)]

    return get


@pytest.fixture(scope="module")
def exported(trained):
    """Factory: (model, method) -> (run dir, its ONNX export), exported once per module."""
    cache: dict = {}

    def get(model: str, method: str):
        if (model, method) not in cache:
            run = trained(model, method)
            cache[(model, method)] = run, export_run(run, "onnx", run.parent / f"{run.name}-onnx")
        return cache[(model, method)]

    return get


def _assert_same_probabilities(run: Path, out: Path, texts: list[str]) -> None:
    import tunelab
    from tunelab.export.onnx_export import OnnxClassifier
    from tunelab.inference.classify import predict_proba

    loaded = tunelab.load(run)
    expected = predict_proba(loaded.model, loaded.tokenizer, texts, loaded.config.train.max_length, 16).numpy()
    onnx = OnnxClassifier(out)
    got = onnx.predict_proba(texts, batch_size=16)
    assert onnx.labels == loaded.config.stage.labels == ["ham", "spam"]
    assert got.shape == expected.shape == (len(texts), 2)
    assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # probabilities, not logits


@pytest.mark.parametrize("method", TINY_BERT_METHODS)
def test_onnxruntime_probabilities_equal_tunelabs(exported, method):
    run, out = exported("tiny-bert", method)
    _assert_same_probabilities(run, out, _test_texts())


def test_decoder_classifier_exports_too(trained, cli_here, tmp_path):
    """Through the CLI: stdout is the folder, as for every format."""
    run, out = trained("tiny-llama", "lora"), tmp_path / "llama-onnx"
    code, stdout, err = cli_here("export", run, "--format", "onnx", "--out", out)
    assert code == 0 and stdout == f"{out}\n", err
    _assert_same_probabilities(run, out, _test_texts(24, 4))
    assert json.loads((out / "classifier.json").read_text())["pooling"] == "last"


@pytest.mark.slow
def test_bundled_minilm_spam_filter(exported):
    run, out = exported("minilm-l6", "head")
    _assert_same_probabilities(run, out, _test_texts(24, 8))


def test_folder_is_self_describing(exported):
    import onnxruntime

    _, out = exported("tiny-bert", "lora")
    info = json.loads((out / "classifier.json").read_text())
    assert info["labels"] == ["ham", "spam"] and info["max_length"] == 32 and info["pooling"] == "mean"
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == info["inputs"] == ["input_ids", "attention_mask"]
    assert all(isinstance(dim, str) for i in inputs for dim in i.shape)  # batch and sequence are dynamic
    assert [o.name for o in session.get_outputs()] == list(info["outputs"]) == ["logits", "probabilities"]
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 32 and tokenizer["padding"]["direction"] == "Right"


def test_readme_snippet_runs_on_the_export(exported, monkeypatch, capsys):
    """The README's five lines, as written, on an exported folder named spam-onnx."""
    run, out = exported("tiny-bert", "full")
    readme = (REPO_ROOT / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "onnxruntime" in block)
    assert len(snippet.strip().splitlines()) == 5
    monkeypatch.chdir(out.parent)
    (out.parent / "spam-onnx").symlink_to(out)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("['ham', 'spam'] [[")
    import tunelab
    from tunelab.inference.classify import predict_proba

    texts = re.search(r"encode_batch\((\[.*?\])\)", snippet).group(1)
    loaded = tunelab.load(run)
    expected = predict_proba(loaded.model, loaded.tokenizer, eval(texts), loaded.config.train.max_length)
    numbers = np.array([float(x) for x in re.findall(r"\d\.\d+(?:e-?\d+)?", printed)]).reshape(2, 2)
    assert np.abs(numbers - expected.numpy()).max() <= 1e-4


def test_a_mismatch_keeps_nothing(exported, monkeypatch, tmp_path):
    """A graph that does not reproduce the run (here: the full run's graph written for the lora run)
    fails the onnxruntime-vs-PyTorch check, and the folder is removed."""
    import shutil

    from tunelab import TunelabError
    from tunelab.export import onnx_export

    _, other = exported("tiny-bert", "full")
    run, _ = exported("tiny-bert", "lora")
    monkeypatch.setattr(onnx_export, "_save_graph", lambda graph, tok, file, run_dir: shutil.copy(other / "model.onnx", file))
    with pytest.raises(TunelabError, match="onnxruntime's logits differ from PyTorch's"):
        export_run(run, "onnx", tmp_path / "bad", ExportOptions())
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory, spam_rows):
    """Finished runs --format onnx must refuse: prefix- and prompt-tuned classifiers, a reward model, an sft run."""
    root = tmp_path_factory.mktemp("refused")
    pairs = write_rows(root / "pairs.jsonl", SYNTHETIC_ROWS["preference"])  # SYNTHETIC
    dolly = write_rows(root / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])  # SYNTHETIC
    return {
        "sft": _train(root, "tiny-llama", {"name": "sft"}, {"name": "lora", "r": 4, "alpha": 8}, dolly, 64),
        "prefix": _train(root, "tiny-bert", {"name": "classify"}, {"name": "prefix", "num_virtual_tokens": 4}, spam_rows),
        "prompt": _train(root, "tiny-bert", {"name": "classify"}, {"name": "prompt", "num_virtual_tokens": 4}, spam_rows),
        "reward": _train(root, "tiny-bert", {"name": "reward"}, {"name": "head"}, pairs),
    }


def _refused(cli_here, run, out: Path, *words, extra=()):
    code, stdout, err = cli_here("export", run, "--format", "onnx", "--out", out, *extra)
    assert code == 2 and stdout == "", err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert not out.exists()


@pytest.mark.parametrize("kind, words", [
    ("prefix", ["method 'prefix'", "cannot export"]),
    ("prompt", ["method 'prompt'", "cannot export"]),
    ("reward", ["a reward run", "classify runs only"]),
    ("sft", ["a sft run", "causal LM", "--format gguf"]),  # generation runs: GGUF is their format
])
def test_unexportable_runs_are_one_line_errors(refused_runs, cli_here, tmp_path, kind, words):
    _refused(cli_here, refused_runs[kind], tmp_path / "out", *words)


def test_gguf_options_are_refused(exported, cli_here, tmp_path):
    run, _ = exported("tiny-bert", "lora")
    _refused(cli_here, run, tmp_path / "out", "--quant", "does not apply", "onnx", extra=("--quant", "q8_0"))
