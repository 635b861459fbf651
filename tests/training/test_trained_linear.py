"""Linear layers that train in fp32 under bf16 autocast (training/trained_linear.py): the weight cast once
per optimizer step, the gradient added into .grad in place — the same numbers as stock autocast."""
from __future__ import annotations

import contextlib

import pytest
import torch

from tunelab.models import CAUSAL_LM, load_model
from tunelab.training import trained_linear as tl


def _batches(vocab: int, n: int = 2):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(5, vocab, (2, 12), generator=g) for _ in range(n)]


def _train(model, batches, switched: bool, steps: int = 2):
    """``steps`` optimizer steps of fused AdamW (which moves weights without bumping their version),
    each over the accumulated ``batches`` under bf16 autocast; returns the last step's gradients."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    with tl.trained_linear_layers(model, switched) as n:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            for ids in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            optimizer.step()
    return n, grads


def test_a_tiny_llama_trains_to_the_same_weights_and_gradients_as_stock_autocast():
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(model.config.vocab_size)
    n_stock, stock = _train(model, batches, switched=False)
    stock_weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    n_switched, switched = _train(model, batches, switched=True)
    assert n_stock == 0 and n_switched == 7 * model.config.num_hidden_layers + 1  # + the (tied) LM head
    for name, grad in stock.items():
        # the same bf16 matmuls and the same fp32 sums; a stale bf16 weight copy after the first
        # (fused) optimizer step would move the second step's gradients far outside this
        torch.testing.assert_close(switched[name], grad, atol=1e-6, rtol=1e-5, msg=name)
        assert switched[name].dtype == torch.float32 and switched[name].layout == torch.strided
    for name, weight in stock_weights.items():
        torch.testing.assert_close(model.state_dict()[name], weight, atol=1e-6, rtol=1e-5, msg=name)


def test_the_bf16_copy_follows_the_weight():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with tl.trained_linear_layers(layer) as n, torch.autocast("cpu", dtype=torch.bfloat16):
        assert n == 1
        before = layer(x).detach()
        with torch.no_grad():
            layer.weight.mul_(2)  # an in-place change outside any optimizer: the version moves
        after = layer(x).detach()
        torch.testing.assert_close(after - layer.bias.to(torch.bfloat16),
                                   2 * (before - layer.bias.to(torch.bfloat16)), atol=5e-2, rtol=2e-2)
        layer.weight.grad = torch.ones_like(layer.weight)
        torch.optim.AdamW([layer.weight], lr=0.5, fused=True).step()  # no version bump: the hook clears
        stepped = layer(x).detach()
        with torch.autocast("cpu", enabled=False):
            want = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
        torch.testing.assert_close(stepped, want)


@pytest.mark.parametrize("case", ["frozen", "bf16 weight", "subclass", "lora"])
def test_layers_that_do_not_train_in_fp32_are_left_alone(case):
    if case == "lora":
        from tunelab.methods import lora

        model, _ = load_model("tiny-llama", CAUSAL_LM)
        model = lora.apply(model, lora.Config(r=4, alpha=8, target_modules="all-linear"))
        # peft's wrappers are not plain Linears and their base layers and the LM head are frozen; the
        # adapters' own A and B matrices are plain Linears that train in fp32, so they switch
        switchable = {name.split(".")[-2] for name, m in model.named_modules() if tl.switchable(m)}
        assert switchable == {"lora_A", "lora_B"}
        return
    layer = torch.nn.Linear(8, 4)
    if case == "frozen":
        layer.requires_grad_(False)
    elif case == "bf16 weight":
        layer.to(torch.bfloat16)
    else:
        layer = type("Scaled", (torch.nn.Linear,), {})(8, 4)
    assert not tl.switchable(layer)
    with tl.trained_linear_layers(layer) as n:
        assert n == 0 and "forward" not in vars(layer)


def test_outside_bf16_autocast_or_without_gradients_the_stock_forward_runs():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    with tl.trained_linear_layers(layer) as n:
        assert n == 1 and "forward" in vars(layer)
        out = layer(x)  # fp32, no autocast: autograd's own node, weight gradient returned to it
        assert out.dtype == torch.float32 and "TrainedLinear" not in type(out.grad_fn).__name__
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).grad_fn is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert "TrainedLinear" in type(out.grad_fn).__name__
        out.float().sum().backward()
        assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert "forward" not in vars(layer)  # the class's forward again


def test_the_engine_switches_eager_single_process_runs(tmp_path, monkeypatch):
    from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

    from tunelab.training import engine

    seen = []
    real = tl.trained_linear_layers

    @contextlib.contextmanager
    def recording(model, active=True):
        with real(model, active) as n:
            seen.append(n)
            yield n

    monkeypatch.setattr(engine, "trained_linear_layers", recording)
    data = write_rows(tmp_path / "sft.jsonl", SYNTHETIC_ROWS["dolly"])
    engine.train(tiny_config("sft", "full", data, tmp_path / "a", max_steps=2), quiet=True)
    monkeypatch.setattr(engine, "single_process", lambda: False)  # what the engine reads of a launch
    engine.train(tiny_config("sft", "full", data, tmp_path / "b", max_steps=2), quiet=True)
    assert seen[0] > 0 and seen[1] == 0
