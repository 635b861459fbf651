"""methods/inference.py: the merged, cast copy a whole evaluation runs, made one tensor at a time.

The reference is what the copy was before: peft's ``merge_and_unload`` on a deep copy of the whole
model, then a cast. The copy made from merged, cast tensors must hold the same values bit for bit.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tunelab.methods import inference, lora
from tunelab.models import CAUSAL_LM, SEQ_CLS, load_model


def _trained(model, **lora_cfg):
    """A LoRA-wrapped model whose adapter is not the identity (B starts at zero) and whose head moved."""
    model = lora.apply(model, lora.Config(r=4, alpha=8, **lora_cfg))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.2 * torch.randn_like(param))
            elif param.requires_grad:  # a classifier's head (modules_to_save)
                param.normal_(0, 0.2)
    return model


def _reference(model, dtype):
    out = copy.deepcopy(model).merge_and_unload()
    return out.to(dtype) if dtype is not None else out


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def fastest(request, monkeypatch):
    monkeypatch.setattr(inference, "fastest_dtype", lambda device: request.param)
    return request.param


@pytest.mark.parametrize("spec,kind", [("tiny-llama", CAUSAL_LM), ("tiny-bert", SEQ_CLS)])
def test_the_copy_holds_peft_merge_then_cast_bit_for_bit(spec, kind, fastest):
    torch.manual_seed(0)
    model, _ = load_model(spec, kind, num_labels=2 if kind == SEQ_CLS else None)
    model = _trained(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert inference._plain_lora_layers(model)  # the one-pass path, not the fallback

    got = inference.inference_model(model)
    expected = _reference(model, fastest)
    got_state, expected_state = got.state_dict(), expected.state_dict()
    assert got_state.keys() == expected_state.keys()
    for key in expected_state:
        assert got_state[key].dtype == expected_state[key].dtype, key
        assert torch.equal(got_state[key], expected_state[key]), key
    assert not any("lora_" in name for name, _ in got.named_modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the run's model untouched
    if kind == CAUSAL_LM:  # tied embeddings stay one tensor in the copy
        assert got.get_output_embeddings().weight is got.get_input_embeddings().weight


def test_the_copy_shares_no_tensor_with_the_run_model(fastest):
    torch.manual_seed(0)
    model, _ = load_model("tiny-bert", SEQ_CLS, num_labels=2)
    model = _trained(model)
    got = inference.inference_model(model)
    originals = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not any(t.data_ptr() in originals for t in [*got.parameters(), *got.buffers()] if t.numel())


def test_a_plain_model_is_cast_in_one_pass(monkeypatch):
    monkeypatch.setattr(inference, "fastest_dtype", lambda device: torch.bfloat16)
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    got = inference.inference_model(model)
    expected = copy.deepcopy(model).to(torch.bfloat16)
    assert got is not model and all(p.dtype == torch.float32 for p in model.parameters())
    for (name, a), (_, b) in zip(got.state_dict().items(), expected.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("variant", [{"use_dora": True}])
def test_lora_variants_take_peft_merge(variant, fastest):
    """DoRA merges through its magnitude vector: the one-pass path must leave it to peft."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **variant))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.2 * torch.randn_like(param))
    assert inference._plain_lora_layers(model) is None
    got, expected = inference.inference_model(model).state_dict(), _reference(model, fastest).state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("amx, bf16_ops, probe_faster, expected", [
    (True, True, False, torch.bfloat16), (False, True, True, torch.bfloat16),
    (False, True, False, torch.float32), (False, False, True, torch.float32)])
def test_evaluation_dtype_on_a_cpu_follows_amx_or_the_bf16_probe(monkeypatch, amx, bf16_ops, probe_faster, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_ops, raising=False)
    monkeypatch.setattr(inference, "bf16_matmul_faster", lambda: probe_faster)
    assert inference.fastest_dtype(torch.device("cpu")) == expected
