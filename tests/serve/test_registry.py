"""The registry: one base per model with its adapter runs attached, ids and names, classify and score."""
from __future__ import annotations

import shutil

import pytest

from tunelab.core.errors import TunelabError
from tunelab.serve.registry import Registry, UnknownModel

from .served_runs import trained


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "served"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def registry(root):
    return Registry([trained(n, root) for n in ("lora-a", "lora-b", "adapter", "ia3", "full", "classify", "reward")])


def test_adapter_runs_share_one_base_and_the_bare_base_is_served(registry, root):
    by_id = {m.id: m for m in registry.models()}
    assert set(by_id) == {"lora-a", "lora-b", "adapter", "ia3", "full", "classify", "reward", "tiny-llama"}
    shared = {registry._entry(n).backend for n in ("tiny-llama", "lora-a", "lora-b", "adapter", "ia3")}
    assert len(shared) == 1
    assert registry._entry("full").backend not in shared
    assert [(by_id[n].kind, by_id[n].method) for n in ("lora-a", "adapter", "ia3", "full", "tiny-llama")] == [
        ("generate", "lora"), ("generate", "adapter"), ("generate", "ia3"), ("generate", "full"), ("generate", None)]
    assert by_id["lora-a"].run_dir == trained("lora-a", root) and by_id["tiny-llama"].run_dir is None
    assert by_id["classify"].kind == "classify" and by_id["classify"].labels == ["0", "1"]
    assert by_id["reward"].kind == "score"
    assert all(m.base == "tiny-llama" and m.context_length == 2048 and m.created > 0 for m in by_id.values())


def test_get_unknown_lists_what_is_served(registry):
    with pytest.raises(UnknownModel, match="'gpt-4'.*lora-a.*tiny-llama"):
        registry.get("gpt-4")


def test_chat_prompt_encode_decode(registry, tiny_tokenizer):
    messages = [{"role": "user", "content": "Hi there"}]
    ids = registry.chat_prompt("lora-a", messages)
    expected = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert registry.decode("lora-a", registry.encode("lora-a", "hello world")) == "hello world"


def test_classify_matches_the_run_loaded_alone(registry, root):
    import tunelab
    from tunelab.inference.classify import predict_proba

    texts = ["I love snow!", "I hate coal."]
    out = registry.classify("classify", texts)
    loaded = tunelab.load(trained("classify", root))
    expected = predict_proba(loaded.model, loaded.tokenizer, texts, 64)
    for row, probs in zip(out, expected.tolist()):
        assert list(row["probabilities"]) == ["0", "1"]
        assert [row["probabilities"][k] for k in ("0", "1")] == pytest.approx(probs, abs=1e-5)
        assert row["label"] == ["0", "1"][probs.index(max(probs))]


def test_score_matches_the_run_loaded_alone(registry, root):
    import tunelab

    prompts, responses = ["What colour is snow?"] * 2, ["White.", "I don't know."]
    expected = tunelab.load(trained("reward", root)).score(prompts, responses)
    assert registry.score("reward", prompts, responses) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(TunelabError, match="2 prompts but 1 responses"):
        registry.score("reward", prompts, responses[:1])


def test_a_model_used_for_what_it_cannot_do_is_refused(registry):
    with pytest.raises(TunelabError, match="'lora-a' generates text"):
        registry.classify("lora-a", ["x"])
    with pytest.raises(TunelabError, match="'classify' classifies text"):
        registry.score("classify", ["p"], ["r"])
    with pytest.raises(TunelabError, match="'reward' scores responses"):
        registry.chat_prompt("reward", [{"role": "user", "content": "x"}])


def test_names_override_and_clashes_are_errors(root):
    a, b = trained("lora-a", root), trained("lora-b", root)
    registry = Registry([a, b], names={str(a): "first"})
    assert {m.id for m in registry.models()} == {"first", "lora-b", "tiny-llama"}
    with pytest.raises(TunelabError, match="'lora-b' .* already served"):
        registry.add(a, name="lora-b")
    with pytest.raises(TunelabError, match="already served as 'tiny-llama'"):
        registry.add("tiny-llama", name="again")
    with pytest.raises(TunelabError, match="names:.*nothing"):
        Registry([a], names={"nothing": "x"})
    registry.remove("first")
    assert "first" not in {m.id for m in registry.models()}
    registry.add(a, name="first")  # a removed id can be served again


def test_base_must_match_the_runs(root, tmp_path):
    from tunelab.models import resolve

    other = shutil.copytree(resolve("tiny-llama"), tmp_path / "other-llama")
    with pytest.raises(TunelabError, match="trained from model 'tiny-llama'.*base .*other-llama"):
        Registry([trained("lora-a", root)], base=str(other))
    registry = Registry(base=str(other))
    assert [m.id for m in registry.models()] == ["other-llama"]


def test_bad_runs_are_one_line_errors(tmp_path):
    with pytest.raises(TunelabError, match="does not exist"):
        Registry([tmp_path / "missing"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("model: tiny-llama\n")
    with pytest.raises(TunelabError, match="has not finished"):
        Registry([tmp_path / "half"])
