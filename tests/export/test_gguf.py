"""`tunelab export --format gguf`, checked by llama.cpp itself (llama-cpp-python) against transformers.

The bundled `smollm2-135m` gets one short LoRA run (two steps on SYNTHETIC rows), shared by the
module: its merged F16 export must give transformers' greedy tokens, Q8_0 its per-position argmax
on a held-out text, and the LoRA adapter on the base GGUF the merged model's. `tiny-llama` covers
the CLI path and the file layout quickly; the refusals need no model at all.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from tunelab.core.errors import TunelabError  # noqa: E402
from tunelab.export import ExportOptions, export_run  # noqa: E402
from tunelab.methods import METHODS  # noqa: E402
from tunelab.runs.open import load  # noqa: E402

GREEDY_TOKENS = 24
# Held out: not in the SYNTHETIC training rows (written for this test); 167 tokens.
HELD_OUT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, "
            "polished the great lens and wrote the weather in a leather-bound log: wind from the north-west, "
            "a swell of two metres, three fishing boats returning before nine. In winter the storms came "
            "without warning, and the beam had to turn all night so that no ship would run onto the rocks. "
            "His daughter learned to read from that log. She knew the names of the boats before she knew the "
            "names of the months, and when she was twelve she could tell from the colour of the sky whether the "
            "ferry would sail in the morning. Years later, when the light was automated and the keeper's cottage "
            "became a museum, she gave the logbooks to the town library, where anyone can still read about the "
            "night of the great storm.")
# The Q8_0 agreement is a rate: 167 positions of one paragraph measure it to +-1.8 points, so it is
# measured over real held-out text long enough to pin it (the Wikipedia sample bundled as the
# forgetting probe, CC BY-SA; see data/text/README.md): 6,000 positions, +-0.3 points.
WIKIPEDIA = Path(__file__).resolve().parents[2] / "data" / "text" / "wikipedia_sample.jsonl"
AGREEMENT_ARTICLES, AGREEMENT_TOKENS = 6, 1000
PROMPTS = [[{"role": "user", "content": "Write one sentence about the sea."}], "The three primary colours are"]


def _ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))


@torch.no_grad()
def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation, never stopping at EOS (so every prompt yields n tokens to compare)."""
    out, past, step = [], None, torch.tensor([ids])
    for _ in range(n):
        result = model(input_ids=step, past_key_values=past, use_cache=True)
        past, token = result.past_key_values, int(result.logits[0, -1].argmax())
        out.append(token)
        step = torch.tensor([[token]])
    return out


def cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()  # (T, V)


def top_two(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the top token and its lead over the runner-up, in logits."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return logits.argmax(-1), top2[:, 1] - top2[:, 0]


def cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])  # (T, V); needs logits_all=True


def open_llama(path, n_ctx=256, **kwargs):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False, **kwargs)


@pytest.fixture
def llama_file():
    """Open GGUF files with llama.cpp; each is closed when the test ends."""
    opened = []

    def open_(path, **kwargs):
        opened.append(open_llama(path, **kwargs))
        return opened[-1]

    yield open_
    for llm in opened:
        llm.close()


# --------------------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """One LoRA run on smollm2-135m, its merged transformers model and its three GGUF exports."""
    from tunelab.training.engine import train

    root = tmp_path_factory.mktemp("gguf-smol")
    data = write_rows(root / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    # lr: a LoRA that matters. fp32: the same weights on every CPU (bf16 autocast on an AMX CPU once gave a
    # model whose 15th greedy token was a 0.004-logit tie, which F16 rounding rightly flips).
    config = tiny_config("sft", "lora", data, root / "runs", max_steps=2, lr=5e-3, precision="fp32")
    config["data"]["eval_fraction"] = 0.0  # no eval pass: the test measures the export, not the run
    run = train({**config, "model": "smollm2-135m"}, quiet=True)
    exports = {
        "f16": export_run(run, "gguf", root / "f16", ExportOptions()) / "model-f16.gguf",
        "q8_0": export_run(run, "gguf", root / "q8", ExportOptions(quant="q8_0")) / "model-q8_0.gguf",
        "adapter": export_run(run, "gguf", root / "lora", ExportOptions(adapter=True)),
    }
    loaded = load(run)
    merged = METHODS["lora"].merge(loaded.model).eval()
    tokenizer = loaded.tokenizer
    # transformers' side, computed once for every test below (the slow part on 2 cores)
    prompts = [_ids(tokenizer, prompt) for prompt in PROMPTS]
    held_out = tokenizer(HELD_OUT)["input_ids"]
    articles = [json.loads(line)["text"] for line in WIKIPEDIA.read_text().splitlines()[:AGREEMENT_ARTICLES]]
    long_texts = [tokenizer(text)["input_ids"][:AGREEMENT_TOKENS] for text in articles]
    reference = {"greedy": [hf_greedy(merged, ids, GREEDY_TOKENS) for ids in prompts],
                 "held_out": held_out, "held_out_logits": hf_logits(merged, held_out),
                 "long_texts": long_texts, "long_top": [top_two(hf_logits(merged, ids)) for ids in long_texts]}
    return {"run": run, "tokenizer": tokenizer, "prompts": prompts, **reference, **exports}


def test_f16_greedy_tokens_equal_transformers(smol, llama_file):
    llm = llama_file(smol["f16"])
    for ids, expected in zip(smol["prompts"], smol["greedy"]):
        assert cpp_greedy(llm, ids, GREEDY_TOKENS) == expected, ids


def test_q8_0_agrees_on_the_top_token_of_a_held_out_text(smol, llama_file):
    """Q8_0 rounds weights (and llama.cpp the activations) to 8 bits: the top token may flip where
    transformers' top two are nearly tied, never where it is clearly decided.

    About a third of the positions of real text are led by less than half a logit on this 135M
    model. Measured over the first 1,000 tokens of six Wikipedia articles (6,000 positions), never
    trained on (the README's export section has the figures). The file llama.cpp's own
    convert_hf_to_gguf.py writes for the same merged model is byte-identical, so the flips are
    Q8_0's, not this writer's.
    """
    llm = llama_file(smol["q8_0"], n_ctx=AGREEMENT_TOKENS)
    agree, decided = [], []
    for ids, (argmax, lead) in zip(smol["long_texts"], smol["long_top"]):
        agree.append(cpp_logits(llm, ids).argmax(-1) == argmax)
        decided.append(lead >= 0.5)  # transformers' top-1 leads by >= 0.5 logit
    agree, decided = np.concatenate(agree), np.concatenate(decided)
    print(f"Q8_0 top-1 agreement {agree.mean():.4f} over {len(agree)} positions, "
          f"{agree[decided].mean():.4f} over the {decided.sum()} decided ones")
    assert len(agree) > 5000 and decided.sum() > 2500
    assert agree[decided].mean() >= 0.99, f"decided positions: top-1 agreement {agree[decided].mean():.4f}"
    assert agree.mean() >= 0.95, f"all positions: top-1 agreement {agree.mean():.4f} over {len(agree)}"
    assert smol["q8_0"].stat().st_size < 0.6 * smol["f16"].stat().st_size  # it really is 8-bit


def test_lora_adapter_on_the_base_gguf_is_the_merged_model(smol, llama_file):
    base, adapter = smol["adapter"] / "base-f16.gguf", smol["adapter"] / "lora.gguf"
    assert sorted(p.name for p in smol["adapter"].iterdir()) == ["base-f16.gguf", "lora.gguf"]
    with_adapter = llama_file(base, lora_path=str(adapter))
    for ids, expected in zip(smol["prompts"], smol["greedy"]):
        assert cpp_greedy(with_adapter, ids, GREEDY_TOKENS) == expected, ids
    # and the adapter is what makes it so: without it llama.cpp is measurably further from the run
    ids, expected = smol["held_out"], smol["held_out_logits"]
    adapted_error = np.abs(cpp_logits(with_adapter, ids) - expected).max()
    base_error = np.abs(cpp_logits(llama_file(base), ids) - expected).max()
    assert adapted_error < 0.5 * base_error, (adapted_error, base_error)


def test_metadata_tokenizer_and_chat_template(smol, llama_file):
    tokenizer = smol["tokenizer"]
    llm = llama_file(smol["f16"])
    meta = llm.metadata
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert int(meta["tokenizer.ggml.bos_token_id"]) == tokenizer.bos_token_id == llm.token_bos()
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.eos_token_id == llm.token_eos()
    for text in [HELD_OUT, "3 33 333 3333 12.5%", "  two  spaces\n\ttab 🦙 naïve café", "<|im_start|>user\nhi<|im_end|>"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    assert llm.detokenize(tokenizer(HELD_OUT)["input_ids"]).decode() == HELD_OUT


# --------------------------------------------------------------------------- tiny-llama: CLI and layout


def test_cli_writes_a_gguf_llama_cpp_reproduces(trained_run, cli_here, tmp_path, llama_file):
    run = trained_run("sft", "lora")
    code, out, err = cli_here("export", run, "--format", "gguf", "--out", tmp_path / "g")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "g") and [p.name for p in (tmp_path / "g").iterdir()] == ["model-f16.gguf"]
    loaded = load(run)
    model = METHODS["lora"].merge(loaded.model).eval()
    ids = loaded.tokenizer(HELD_OUT)["input_ids"]
    expected = hf_logits(model, ids)
    got = cpp_logits(llama_file(tmp_path / "g" / "model-f16.gguf"), ids)
    assert np.abs(got - expected).max() < 2e-2 * np.abs(expected).max()  # f16 weights, f32 reference


def test_q8_0_file_layout(trained_run, tmp_path):
    out = export_run(trained_run("sft", "lora"), "gguf", tmp_path / "q", ExportOptions(quant="q8_0"))
    reader = gguf.GGUFReader(out / "model-q8_0.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert len(types) == 2 + 9 * 2  # embedding, final norm, 9 tensors per layer


def test_rope_permutation_pairs_the_halves_of_each_head():
    from tunelab.export.gguf import rope_permute

    rows = np.arange(8)[:, None]  # two heads of head_dim 4: HF rotates (0,2),(1,3); llama.cpp (0,1),(2,3)
    assert rope_permute(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    from tunelab.training.engine import train

    root = tmp_path_factory.mktemp("gguf-classify")
    data = write_rows(root / "cls.jsonl", SYNTHETIC_ROWS["classification"])
    return train({**tiny_config("classify", "full", data, root / "runs", max_steps=1), "model": "tiny-bert"}, quiet=True)


@pytest.mark.parametrize("run, args, words", [
    (("sft", "prefix"), (), ["method 'prefix'", "cannot be merged"]),
    (("sft", "full"), ("--adapter",), ["--adapter", "LoRA", "method 'full'"]),
    (("sft", "lora"), ("--quant", "q4_k"), ["--quant", "q4_k", "f16, q8_0"]),
    ("classify", (), ["a classify run", "causal LM"]),
])
def test_refusals_are_one_line_errors_and_write_nothing(trained_run, classify_run, cli_here, tmp_path, run, args, words):
    run_dir = classify_run if run == "classify" else trained_run(*run)
    code, out, err = cli_here("export", run_dir, "--format", "gguf", "--out", tmp_path / "out", *args)
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert str(run_dir) in err or "--quant" in err, err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_a_non_llama_model_is_refused():
    from transformers import GPT2Config

    from tunelab.export.gguf import check_llama_config

    with pytest.raises(TunelabError, match=r"run r is built on model 'gpt2-tiny' \(gpt2\).*llama-family"):
        check_llama_config(GPT2Config(n_layer=1), "run r", "gpt2-tiny")
