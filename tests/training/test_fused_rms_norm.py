"""Llama-style RMSNorms train as one autograd node (training/fused_rms_norm.py): the stock module's
values and gradients, only for layers whose forward is exactly Llama's, wired around the engine."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from tunelab.models import CAUSAL_LM, load_model
from tunelab.training import engine
from tunelab.training.fused_rms_norm import fused_rms_norms, fusable, rms_norm


def _norm(cls, dtype, train_weight: bool, hidden=24):
    norm = cls(hidden, eps=1e-5)
    norm.weight.data = (1 + 0.2 * torch.randn(hidden, generator=torch.Generator().manual_seed(3))).to(dtype)
    return norm.requires_grad_(train_weight)


def _grads(fn, x, weight, grad):
    x.grad, weight.grad = None, None
    out = fn()
    out.backward(grad)
    return out.detach(), x.grad.clone(), None if weight.grad is None else weight.grad.clone()


@pytest.mark.parametrize("dtype, weight_dtype, train_weight", [
    (torch.float32, torch.float32, True),   # full fine-tuning: fp32 residual stream, trained weight
    (torch.bfloat16, torch.bfloat16, False),  # LoRA on a bf16 base: frozen bf16 weight
    (torch.bfloat16, torch.float32, True),  # bf16 activations, fp32 trained weight (type promotion)
])
def test_values_and_gradients_match_the_stock_module(dtype, weight_dtype, train_weight):
    norm = _norm(LlamaRMSNorm, weight_dtype, train_weight)
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(2, 7, 24, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    out_dtype = torch.promote_types(dtype, weight_dtype)
    grad = torch.randn(2, 7, 24, generator=g, dtype=torch.float64).to(out_dtype)
    stock = _grads(lambda: norm(x), x, norm.weight, grad)
    fused = _grads(lambda: rms_norm(x, norm.weight, norm.variance_epsilon), x, norm.weight, grad)
    assert torch.equal(fused[0], stock[0])  # the forward is the stock arithmetic, bit for bit
    for name, want, got in zip(("out", "x grad", "weight grad"), stock, fused):
        if want is None:
            assert got is None and not train_weight
            continue
        assert got.dtype == want.dtype, name
        tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(got, want, msg=name, **tol)


def test_only_layers_with_llamas_exact_forward_are_switched_and_restored():
    llama, qwen, gemma = (_norm(c, torch.float32, True) for c in (LlamaRMSNorm, Qwen2RMSNorm, GemmaRMSNorm))
    assert fusable(llama) and fusable(qwen) and not fusable(gemma)  # Gemma scales by (1 + weight)
    assert not fusable(torch.nn.LayerNorm(4)) and not fusable(torch.nn.RMSNorm(4))
    model = torch.nn.ModuleList([llama, qwen, gemma])
    with fused_rms_norms(model) as switched:
        assert switched == 2 and "forward" in vars(llama) and "forward" not in vars(gemma)
    assert not any("forward" in vars(m) for m in model)
    with fused_rms_norms(model, active=False) as switched:
        assert switched == 0


def test_a_whole_tiny_llama_trains_to_the_same_loss_and_gradients():
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    model.train()
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(1))

    def step(fused: bool):
        model.zero_grad(set_to_none=True)
        with fused_rms_norms(model, fused) as switched:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return switched, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    n0, loss0, g0 = step(False)
    n1, loss1, g1 = step(True)
    assert n0 == 0 and n1 == 2 * model.config.num_hidden_layers + 1
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_engine_trains_through_fused_norms(tmp_path):
    from conftest import SYNTHETIC_ROWS, write_rows
    from transformers import TrainerCallback

    seen = []

    class Fused(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(sum("forward" in vars(m) for m in model.modules() if fusable(m)))

    data = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    cfg = tiny_config("sft", "full", data, tmp_path / "runs", max_steps=2)
    run = engine.train(cfg, quiet=True, callbacks=[Fused()])
    assert seen and all(n > 0 for n in seen)
    assert json.loads((run / "summary.json").read_text())["metrics"]["train_loss"] > 0
