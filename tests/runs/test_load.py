"""Using a finished run: stock peft/transformers load it identically to `tunelab.load`; generation."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunelab
from tunelab.core.errors import TunelabError
from tunelab.models import resolve

PROMPT = [{"role": "user", "content": "What colour is the sky?"}]  # SYNTHETIC


def _inputs(tokenizer):
    return tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)


@torch.no_grad()
def test_lora_adapter_loads_with_stock_peft_and_matches_tunelab(trained_run):
    from peft import PeftModel

    run = trained_run("sft", "lora")
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    base_path = adapter_config["base_model_name_or_path"]
    assert base_path == resolve("tiny-llama")  # the cached safetensors dir, not the bundled name

    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    inputs = _inputs(tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(base_path).eval()
    base_logits = plain(**inputs).logits
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), run / "adapter").eval()
    ours = tunelab.load(run).model
    stock_logits, our_logits = stock(**inputs).logits, ours(**inputs).logits
    torch.testing.assert_close(stock_logits, our_logits, atol=1e-6, rtol=0)
    # The adapter is not a no-op, so the match above compares something.
    assert (stock_logits - base_logits).abs().max() > 1e-4


@torch.no_grad()
def test_full_model_loads_with_stock_transformers_and_matches_tunelab(trained_run):
    run = trained_run("sft", "full")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    inputs = _inputs(tokenizer)
    stock = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(resolve("tiny-llama")).eval()
    stock_logits = stock(**inputs).logits
    torch.testing.assert_close(stock_logits, tunelab.load(run).model(**inputs).logits, atol=1e-6, rtol=0)
    assert (stock_logits - base(**inputs).logits).abs().max() > 1e-4


def test_load_returns_config_and_generates_deterministically(trained_run):
    run = trained_run("sft", "lora")
    loaded = tunelab.load(run)
    assert loaded.run_dir == run and loaded.config.method.name == "lora"
    first = loaded.generate("What colour is the sky?", max_new_tokens=6)
    assert isinstance(first, str) and first == loaded.generate(PROMPT, max_new_tokens=6)  # greedy


def test_generate_cli_on_finished_run(trained_run, cli):
    run = trained_run("sft", "lora")
    expected = tunelab.load(run).generate("What colour is the sky?", max_new_tokens=6)
    rc, out, err = cli("generate", run, "What colour is the sky?", "--max-new-tokens", "6")
    assert rc == 0, err
    assert "Traceback" not in err
    assert out.rstrip("\n") == expected


def test_load_unfinished_run_is_an_error(tmp_path, trained_run):
    (tmp_path / "config.yaml").write_text((trained_run("sft", "lora") / "config.yaml").read_text())
    with pytest.raises(TunelabError, match="has not finished"):
        tunelab.load(tmp_path)


def test_load_plain_model_spec():
    loaded = tunelab.load("tiny-llama")
    assert loaded.config is None and type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not loaded.model.training


@pytest.mark.slow
def test_smollm2_answers_capital_of_france(cli):
    """Integration: the bundled real SmolLM2-135M-Instruct (dequantised from its GGUF) answers sensibly."""
    rc, out, err = cli("generate", "smollm2-135m", "What is the capital of France?", "--max-new-tokens", "24",
                       timeout=600)
    assert rc == 0, err[-3000:]
    assert "Paris" in out
