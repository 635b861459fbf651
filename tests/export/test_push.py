"""`tunelab push`: the dry-run folder is what stock peft/transformers and huggingface_hub load, and every
refusal is one line that leaves nothing behind. Nothing here reaches the Hub (no network in tests)."""
from __future__ import annotations

import json
import shutil
import socket

import pytest

from tunelab.export import card as cards


def _one_line_error(code, out, err, *words, notes: bool = False):
    """Exit 2, nothing on stdout, one `error:` line on stderr (after tunelab's progress notes, if ``notes``)."""
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert lines[-1].startswith("error: push:") and err.endswith("\n") and "Traceback" not in err, err
    assert len(lines) == 1 or notes and all(line.startswith("push: ") for line in lines[:-1]), err
    assert all(word in lines[-1] for word in words), err


def _logits(model, tokenizer):
    import torch

    with torch.no_grad():
        probe = tokenizer(["What colour is the sky?"], return_tensors="pt")
        return model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits


def _card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def _check_eval_results(card, run):
    """model-index holds exactly the run's eval metrics, at the values summary.json records."""
    summary = json.loads((run / "summary.json").read_text())
    expected = {key[len("eval_"):]: value for key, value in summary["metrics"].items()
                if key.startswith("eval_") and key not in ("eval_runtime", "eval_samples_per_second",
                                                           "eval_steps_per_second")}
    results = card.data.eval_results
    assert expected and {r.metric_type: r.metric_value for r in results} == expected
    assert {r.task_type for r in results} == {"text-generation"}
    assert card.data.model_name == "tiny-sft"


def test_adapter_dry_run_loads_with_stock_peft(trained_run, cli_here, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tunelab
    from tunelab.models import resolve

    run = trained_run("sft", "lora")
    out = tmp_path / "dry"
    code, stdout, err = cli_here("push", run, "someone/tiny-sft", "--dry-run", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "tokenizer.json",
         "tokenizer_config.json", "tunelab/config.yaml", "tunelab/summary.json"])
    assert (out / "adapter_model.safetensors").read_bytes() == (run / "adapter" / "adapter_model.safetensors").read_bytes()

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve("tiny-llama")), out).eval()
    expected = tunelab.load(run)
    assert torch.allclose(_logits(model, tokenizer), _logits(expected.model, expected.tokenizer), atol=1e-5)

    card = _card(out)
    assert card.data.library_name == "peft"
    assert card.data.base_model is None  # tiny-llama is not on the Hub: no made-up base_model id
    assert card.data.license == "other"
    assert {"tunelab", "sft", "lora", "peft"} <= set(card.data.tags)
    _check_eval_results(card, run)
    config = (run / "config.yaml").read_text()
    assert (out / "tunelab" / "config.yaml").read_text() == config
    for words in ("stage | `sft`", "method | `lora`", "method.r | `4`", "train.lr | `0.01`", "sft.jsonl",
                  "tunelab train tunelab/config.yaml", "PeftModel.from_pretrained(base, \"someone/tiny-sft\")"):
        assert words in card.text, words


def test_merged_dry_run_loads_with_automodel(trained_run, cli_here, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tunelab

    run = trained_run("sft", "lora")
    out = tmp_path / "merged"
    code, _, err = cli_here("push", run, "tiny-sft", "--merged", "--dry-run", out, "--license", "mit")
    assert code == 0, err
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = tunelab.load(run)
    assert torch.allclose(_logits(model, AutoTokenizer.from_pretrained(out)),
                          _logits(expected.model, expected.tokenizer), atol=1e-4)
    card = _card(out)
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert "peft" not in card.data.tags
    _check_eval_results(card, run)


def test_full_fine_tune_pushes_the_model_itself(trained_run, cli_here, tmp_path):
    """full (like freeze and head) has no adapter: the default upload is the plain transformers model."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    code, _, err = cli_here("push", trained_run("sft", "full"), "someone/tiny-sft", "--dry-run", out)
    assert code == 0, err
    AutoModelForCausalLM.from_pretrained(out)
    assert _card(out).data.library_name == "transformers"


def test_bottleneck_adapter_is_refused_with_the_reason(trained_run, cli_here, tmp_path):
    code, out, err = cli_here("push", trained_run("sft", "adapter"), "someone/x", "--dry-run", tmp_path / "dry")
    _one_line_error(code, out, err, "method 'adapter'", "neither peft nor transformers", "tunelab serve")
    assert not (tmp_path / "dry").exists()
    code, out, err = cli_here("push", trained_run("sft", "adapter"), "someone/x", "--merged", "--dry-run",
                              tmp_path / "dry")
    _one_line_error(code, out, err, "method 'adapter'")


def test_merged_on_an_unmergeable_method_is_refused(trained_run, cli_here, tmp_path):
    code, out, err = cli_here("push", trained_run("sft", "prefix"), "someone/x", "--merged", "--dry-run",
                              tmp_path / "dry")
    _one_line_error(code, out, err, "--merged", "'prefix'", "cannot be merged", "mergeable: ")
    assert not (tmp_path / "dry").exists()


def test_baseline_and_unfinished_runs_are_refused(trained_run, cli_here, tmp_path):
    code, _, err = cli_here("zeroshot", "--model", "tiny-llama", "--out", tmp_path / "zs")
    assert code == 0, err
    _one_line_error(*cli_here("push", tmp_path / "zs", "someone/x", "--dry-run", tmp_path / "dry"),
                    "zeroshot baseline", "no trained weights")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run("sft", "lora"), unfinished)
    (unfinished / "summary.json").unlink()
    _one_line_error(*cli_here("push", unfinished, "someone/x", "--dry-run", tmp_path / "dry"), "has not finished")
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("repo_id", ["bad id!", "a/b/c", "someone/ends-with-", "x" * 120])
def test_bad_repo_id_is_refused(trained_run, cli_here, tmp_path, repo_id):
    _one_line_error(*cli_here("push", trained_run("sft", "lora"), repo_id, "--dry-run", tmp_path / "dry"),
                    "repo id", "not valid")
    assert not (tmp_path / "dry").exists()


def test_a_failure_while_writing_removes_the_dry_run_folder(trained_run, cli_here, tmp_path, monkeypatch):
    from tunelab.core.errors import TunelabError

    def broken_card(*args, **kwargs):  # the last step of writing the folder: weights are already there
        raise TunelabError("push: the card cannot be written (test)")

    monkeypatch.setattr(cards, "build_card", broken_card)
    _one_line_error(*cli_here("push", trained_run("sft", "lora"), "someone/x", "--dry-run", tmp_path / "dry"),
                    "card cannot be written", notes=True)
    assert not (tmp_path / "dry").exists()


def _hub_env(tmp_path, **extra):
    """No stored login (a fresh HF_HOME), no staging left behind outside tmp_path (TMPDIR)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "", "TMPDIR": str(tmp_path / "tmp"), **extra}


def test_no_token_is_a_one_line_error(trained_run, cli, tmp_path):
    code, out, err = cli("push", trained_run("sft", "lora"), "someone/x", env=_hub_env(tmp_path, HF_HUB_OFFLINE="0"))
    _one_line_error(code, out, err, "no Hugging Face token", "HF_TOKEN", "--dry-run")


def test_offline_is_a_one_line_error(trained_run, cli, tmp_path):
    code, out, err = cli("push", trained_run("sft", "lora"), "someone/x",
                         env=_hub_env(tmp_path, HF_TOKEN="hf_test", HF_HUB_OFFLINE="1"))
    _one_line_error(code, out, err, "HF_HUB_OFFLINE", "--dry-run")


def test_unreachable_hub_is_a_one_line_error_and_leaves_nothing(trained_run, cli, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = cli("push", trained_run("sft", "lora"), "someone/x",
                         env=_hub_env(tmp_path, HF_TOKEN="hf_test", HF_HUB_OFFLINE="0",
                                      HF_ENDPOINT=f"http://127.0.0.1:{port}"))
    _one_line_error(code, out, err, "out of reach", f"127.0.0.1:{port}")
    assert not list((tmp_path / "tmp").glob(".tunelab-push-*"))


def test_card_names_hub_base_licence_and_datasets(trained_run):
    """A bundled model that is a Hub model's copy becomes base_model; Hub dataset ids become datasets."""
    from huggingface_hub import ModelCard

    from tunelab.runs.open import open_run

    info = open_run(trained_run("sft", "lora"))
    info.config = info.config.model_copy(update={
        "model": "smollm2-135m",
        "data": info.config.data.model_copy(update={"train": "someone/chats", "eval": "someone/chats-eval"})})
    card = ModelCard(str(cards.build_card(info, "someone/tiny-sft", "adapter")))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["someone/chats", "someone/chats-eval"]
    assert {r.dataset_type for r in card.data.eval_results} == {"someone/chats-eval"}
    assert "Q4_1" in card.text  # the bundled base is not bit-for-bit the Hub's: the card says so


class _StandInHub:
    """A stand-in for the Hub's HTTP API (the real one is out of reach in tests), just enough for a push to get
    as far as the upload, which it refuses (403, as for a read-only token); every request is recorded."""

    def __init__(self, repo_exists: bool):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub, self.requests = self, []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                hub.requests.append((self.command, self.path.split("?")[0]))
                path, status, body, extra = self.path.split("?")[0], 403, {"error": "stand-in: read-only token"}, {}
                if path == "/api/whoami-v2":
                    status, body = 200, {"name": "someone", "type": "user"}
                elif self.command == "GET" and path == "/api/models/someone/x":
                    status, body = (200, {"id": "someone/x"}) if repo_exists else (404, {"error": "not found"})
                    extra = {} if repo_exists else {"X-Error-Code": "RepoNotFound"}
                elif self.command == "GET" and path.startswith("/api/models/someone/x/tree/"):
                    status, body = 200, []
                elif path == "/api/repos/create":
                    status, body = 200, {"url": f"{hub.url}/someone/x", "name": "someone/x"}
                elif path == "/api/repos/delete":
                    status, body = 200, {}
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                   **extra}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("repo_exists", [False, True])
def test_a_refused_upload_deletes_the_repo_it_created(trained_run, cli, tmp_path, repo_exists):
    hub = _StandInHub(repo_exists)
    try:
        code, out, err = cli("push", trained_run("sft", "lora"), "someone/x",
                             env=_hub_env(tmp_path, HF_TOKEN="hf_test", HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url))
    finally:
        hub.close()
    _one_line_error(code, out, err, "cannot upload to someone/x", "403", notes=True)
    assert ("POST", "/api/repos/create") in hub.requests
    assert (("DELETE", "/api/repos/delete") in hub.requests) is not repo_exists  # an existing repo is kept
    assert not list((tmp_path / "tmp").glob(".tunelab-push-*"))  # the staged folder is gone too


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """Factory: a tiny-llama classify run with `method`, trained once per module through the CLI."""
    from conftest import SYNTHETIC_ROWS, run_cli, tiny_config, write_config, write_rows

    root, made = tmp_path_factory.mktemp("classify"), {}

    def get(method: str):
        if method not in made:
            data = write_rows(root / "cls.jsonl", SYNTHETIC_ROWS["classification"])
            config = write_config(root / f"{method}.yaml", tiny_config("classify", method, data, root / "runs"))
            code, out, err = run_cli("train", config, "--quiet")
            assert code == 0, err[-3000:]
            made[method] = out.strip().splitlines()[-1]
        return made[method]

    return get


def test_classifier_runs_are_refused_with_the_reason(classify_run, cli_here, tmp_path):
    """head (classify only) and any classify/reward run: no stock transformers class reproduces tunelab's head."""
    run = classify_run("head")
    for extra in ((), ("--merged",)):
        _one_line_error(*cli_here("push", run, "someone/x", *extra, "--dry-run", tmp_path / "dry"),
                        "classify run", "stock transformers", "tunelab serve")
        assert not (tmp_path / "dry").exists()
