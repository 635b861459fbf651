"""Prefix injection (methods/_prefix_kv.py) checked against references written out independently.

Where peft cannot run a classifier's prefix (transformers >= 5.24 renamed ``past_key_values``),
tunelab prepends the prefix keys/values inside each attention call. Injection is forced on here,
so these tests run under every transformers version:

- one layer's output equals attention over ``[prefix_kv; kv]`` computed here by hand (BERT with
  sdpa and eager attention; llama with RoPE on the real keys only, grouped KV heads, causal mask);
- the whole model equals transformers' own prefix-in-the-cache computation fed with peft's own
  ``get_prompt`` (what peft does where it can), so an adapter means the same on either path;
- outside the prefix forward (the base model's own forward) the model is exactly the base model;
- the encoder classifier's masked mean pooling still ignores padding.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from tunelab.models.classifier import build_classifier
from tunelab.methods import _prefix_kv, prefix
from tunelab.models import SEQ_CLS, load_model

P = 4  # virtual tokens
TEXTS = ["The colour of the sky is blue, everyone knows.", "Snow is white."]  # SYNTHETIC


def _randomise_prefix(model):
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 0.5)  # a trained-looking prefix, so that what it adds matters


def injected(spec: str, attention: str = "sdpa", projection: bool = False):
    torch.manual_seed(0)
    model, tokenizer = load_model(spec, SEQ_CLS, num_labels=2)
    if attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    model = prefix.apply(model, prefix.Config(num_virtual_tokens=P, prefix_projection=projection))
    model = _prefix_kv.attach(model, force=True)
    assert isinstance(model, _prefix_kv.InjectedPrefixPeftModelForSequenceClassification)
    _randomise_prefix(model)
    return model.eval(), tokenizer


def capture(module):
    """Record one call of ``module``: its hidden-state input, its keyword arguments and its output."""
    seen = {}

    def before(mod, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = kwargs

    def after(mod, args, kwargs, out):
        seen["out"] = out[0]

    handles = [module.register_forward_pre_hook(before, with_kwargs=True),
               module.register_forward_hook(after, with_kwargs=True)]
    return seen, handles


def prefix_table(model, layer: int, heads: int):
    """(keys, values) of ``layer``, each (heads, P, head_dim), read straight from peft's parameter
    layout: one row per virtual token of num_layers * 2 * heads * head_dim, layer-major (k, v) pairs."""
    cfg = model.active_peft_config
    weight = model.prompt_encoder["default"].embedding.weight
    table = weight.view(P, cfg.num_layers * 2, heads, -1)
    return table[:, 2 * layer].transpose(0, 1), table[:, 2 * layer + 1].transpose(0, 1)


def attend(q, k, v, keep):
    """softmax(q k^T / sqrt(d) masked by ``keep``) v, the textbook way; keep: (B, 1 or H, Tq, Tk) bool."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bert_layer_is_attention_over_prefix_then_keys(attention):
    model, tokenizer = injected("tiny-bert", attention)
    base = model.get_base_model()
    layer = 1  # not 0: the layer index must pick the layer's own rows of the table
    module = base.bert.encoder.layer[layer].attention.self
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # row 1 is padded
    seen, handles = capture(module)
    with torch.no_grad():
        model(**batch)
        for handle in handles:
            handle.remove()
        hidden = seen["hidden"]
        batch_size, length, _ = hidden.shape
        heads, head_dim = module.num_attention_heads, module.attention_head_size

        def split(x):
            return x.view(batch_size, length, heads, head_dim).transpose(1, 2)

        q, k, v = split(module.query(hidden)), split(module.key(hidden)), split(module.value(hidden))
        prefix_k, prefix_v = (t.expand(batch_size, -1, -1, -1) for t in prefix_table(model, layer, heads))
        keys, values = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
        visible = torch.cat([torch.ones(batch_size, P, dtype=torch.bool), batch["attention_mask"].bool()], dim=1)
        expected = attend(q, keys, values, visible[:, None, None, :]).transpose(1, 2).reshape(batch_size, length, -1)
    torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-5)


def test_llama_layer_is_attention_over_unrotated_prefix_then_rotated_keys():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, tokenizer = injected("tiny-llama")
    base = model.get_base_model()
    layer = 1
    module = base.model.layers[layer].self_attn
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    seen, handles = capture(module)
    with torch.no_grad():
        model(**batch)
        for handle in handles:
            handle.remove()
        hidden = seen["hidden"]
        batch_size, length, _ = hidden.shape
        cos, sin = seen["kwargs"]["position_embeddings"]
        # the real tokens sit after the prefix, as they would after a cache holding it
        positions = torch.arange(P, P + length).unsqueeze(0).expand(batch_size, -1)
        want_cos, want_sin = base.model.rotary_emb(hidden, position_ids=positions)
        torch.testing.assert_close((cos, sin), (want_cos, want_sin), atol=0, rtol=0)

        head_dim, kv_heads = module.head_dim, base.config.num_key_value_heads
        groups = base.config.num_attention_heads // kv_heads
        assert groups > 1  # the tiny llama has grouped KV heads: the prefix has kv_heads heads

        def split(x):
            return x.view(batch_size, length, -1, head_dim).transpose(1, 2)

        q, k = apply_rotary_pos_emb(split(module.q_proj(hidden)), split(module.k_proj(hidden)), cos, sin)
        v = split(module.v_proj(hidden))
        prefix_k, prefix_v = (t.expand(batch_size, -1, -1, -1) for t in prefix_table(model, layer, kv_heads))
        keys = torch.cat([prefix_k, k], dim=2).repeat_interleave(groups, dim=1)
        values = torch.cat([prefix_v, v], dim=2).repeat_interleave(groups, dim=1)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        real = causal[None] & batch["attention_mask"].bool()[:, None, :]  # (B, Tq, Tk)
        visible = torch.cat([torch.ones(batch_size, length, P, dtype=torch.bool), real], dim=2)
        out = attend(q, keys, values, visible[:, None]).transpose(1, 2).reshape(batch_size, length, -1)
        expected = module.o_proj(out)
    torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-5)


def _cache_keyword(forward) -> str:
    params = inspect.signature(forward).parameters
    return "past_key_values" if "past_key_values" in params else "cache"  # renamed in transformers 5.24


@pytest.mark.parametrize("projection", [False, True], ids=["table", "mlp"])
@pytest.mark.parametrize("spec", ["tiny-bert", "tiny-llama"])
def test_model_equals_transformers_own_prefix_cache(spec, projection):
    """Reference: peft's own get_prompt (a cache pre-filled with the prefix) handed to the model's
    own cache path, with the prefix columns prepended to the mask -- peft's computation wherever
    peft can run it."""
    model, tokenizer = injected(spec, projection=projection)
    base = model.get_base_model()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    batch_size = batch["input_ids"].shape[0]
    mask = torch.cat([torch.ones(batch_size, P, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], 1)
    with torch.no_grad():
        got = model(**batch).logits
        cache = model.get_prompt(batch_size)
        if spec == "tiny-bert":
            out = base.bert(input_ids=batch["input_ids"], attention_mask=mask,
                            **{_cache_keyword(base.bert.forward): cache})
            want = base.classifier(base.dropout(out.pooler_output))
        else:
            want = base(input_ids=batch["input_ids"], attention_mask=mask,
                        **{_cache_keyword(base.forward): cache}).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["tiny-bert", "tiny-llama"])
def test_outside_the_prefix_forward_the_model_is_the_base_model(spec):
    torch.manual_seed(0)
    plain, tokenizer = load_model(spec, SEQ_CLS, num_labels=2)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = plain.eval()(**batch).logits
    model, _ = injected(spec)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, want)  # the prefix does something
        # (peft's disable_adapter() fails on any prompt-learning classifier: it needs prepare_inputs_for_generation)
        assert torch.equal(model.get_base_model()(**batch).logits, want)  # the base model's own forward


def test_masked_mean_pooling_still_ignores_padding():
    torch.manual_seed(0)
    model, tokenizer = build_classifier("tiny-bert", ["no", "yes"], pooling="mean")
    model = _prefix_kv.attach(prefix.apply(model, prefix.Config(num_virtual_tokens=P)), force=True)
    _randomise_prefix(model)
    model.eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
        padded = model(**batch).logits[1]
        alone = model(**tokenizer(TEXTS[1:], return_tensors="pt")).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_a_layer_the_prefix_never_reaches_is_an_error():
    from tunelab.core.errors import TunelabError

    model, tokenizer = injected("tiny-bert")
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    module = model.get_base_model().bert.encoder.layer[0].attention.self
    object.__delattr__(module, _prefix_kv._SLOT)  # as if the model stopped routing this layer through us
    with pytest.raises(TunelabError, match=r"reached layers \[1\] of 2"), torch.no_grad():
        model(**batch)
