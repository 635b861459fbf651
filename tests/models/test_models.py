"""Model specs: bundled names, local directories, Hub ids (offline), seeded tiny models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.core.errors import TunelabError
from tunelab.models import BUNDLED, CAUSAL_LM, count_params, list_models, load_model, resolve
from tunelab.models.loading import _build_tiny_llama


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_tiny_llama_is_seeded_and_reproducible(tmp_path):
    cached = Path(resolve("tiny-llama"))
    _build_tiny_llama(tmp_path)  # a fresh build must give exactly the cached weights
    fresh, reference = _weights(tmp_path), _weights(cached)
    assert fresh.keys() == reference.keys() and fresh
    assert all(torch.equal(fresh[k], reference[k]) for k in fresh)


def test_bundled_tiny_llama_loads_as_plain_transformers_dir():
    location = Path(resolve("tiny-llama"))
    assert (location / "config.json").is_file() and list(location.glob("*.safetensors"))
    model, tokenizer = load_model("tiny-llama")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert tokenizer.chat_template and tokenizer.pad_token is not None


def test_local_model_directory_is_accepted():
    location = resolve("tiny-llama")
    assert resolve(location) == str(Path(location).resolve())
    model, _ = load_model(location)
    assert model.config.hidden_size == 64


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(TunelabError, match="has no config.json"):
        resolve(str(tmp_path))


def test_file_is_not_a_model(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(TunelabError, match="is a file, not a model directory"):
        resolve(str(file))


def test_unknown_name_suggests_bundled_model():
    with pytest.raises(TunelabError) as info:
        load_model("tiny-lama")
    assert "'tiny-lama'" in str(info.value) and "did you mean 'tiny-llama'" in str(info.value)


def test_hub_id_offline_says_so():
    with pytest.raises(TunelabError) as info:
        load_model("someorg/some-model-that-is-not-here")
    assert "cannot be reached (offline)" in str(info.value)


def test_encoder_is_rejected_for_causal_lm():
    with pytest.raises(TunelabError, match="is an encoder"):
        load_model("tiny-bert", CAUSAL_LM)


def test_count_params_counts_tied_weights_once():
    model, _ = load_model("tiny-llama")
    assert model.config.tie_word_embeddings
    unique = {id(p): p.numel() for p in model.parameters()}
    trainable, total = count_params(model)
    assert total == sum(unique.values()) == trainable
    # lm_head shares the embedding matrix: counting per name would count it twice.
    assert total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    for p in model.parameters():
        p.requires_grad_(False)
    assert count_params(model) == (0, total)


def test_list_models_and_cli(cli):
    rows = {row["name"]: row for row in list_models()}
    assert set(rows) == set(BUNDLED)
    assert rows["tiny-llama"]["params"] == count_params(load_model("tiny-llama")[0])[1]
    rc, out, err = cli("models")
    assert rc == 0, err
    for name in BUNDLED:
        assert name in out
    assert f"{rows['tiny-llama']['params']:,}" in out
