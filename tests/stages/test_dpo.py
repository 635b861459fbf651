"""Stage `dpo`: loss parity with the paper's formula, reference = policy with adapter off, CLI runs."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows
from tunelab.config import load_config
from tunelab.methods import lora
from tunelab.models import load_model
from tunelab.stages import dpo, _reference


def test_dpo_loss_matches_plain_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) * 3 for _ in range(4))
    beta = 0.2
    expected = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = beta * ((a - c) - (b - d))
        expected.append(-math.log(1 / (1 + math.exp(-z))))
    loss, chosen, rejected = dpo.dpo_loss(pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-6)
    assert torch.allclose(chosen, beta * (pc - rc)) and torch.allclose(rejected, beta * (pr - rr))


def _pair_batch(tokenizer):
    pair = {"prompt": "What colour is snow?", "chosen": "White.", "rejected": "I don't know."}
    return dpo.PairCollator(tokenizer.pad_token_id)([dpo.encode_pair(tokenizer, pair, 64)])


def test_lora_reference_shares_the_policy_weights_and_is_the_base():
    model, tokenizer = load_model("tiny-llama")
    base_params = sum(p.numel() for p in model.parameters())
    batch = _pair_batch(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_labels"])
    with torch.no_grad():
        base_logps = _reference.sequence_logps(model.eval(), *args)
    policy = lora.apply(model, lora.Config(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # move the policy away from the base
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    loss_fn = dpo.make_loss(_cfg(), policy, tokenizer)
    ref = loss_fn.reference
    assert ref.shares_weights and ref.model is policy  # no second model object
    policy_storage = {p.data_ptr() for p in policy.parameters()}
    assert {p.data_ptr() for p in ref.model.parameters()} <= policy_storage
    extra = sum(p.numel() for p in policy.parameters()) - base_params
    assert extra < 0.1 * base_params  # policy + reference together: base + small LoRA, not 2x base
    with ref.active() as reference:
        ref_logps = _reference.sequence_logps(reference, *args)
    with torch.no_grad():
        policy_logps = _reference.sequence_logps(policy, *args)
    assert torch.allclose(ref_logps, base_logps, atol=1e-5)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)
    loss, _ = loss_fn(policy.train(), batch)
    assert torch.isfinite(loss)


def test_full_reference_is_a_frozen_copy():
    model, tokenizer = load_model("tiny-llama")
    ref = _reference.Reference(model)
    assert not ref.shares_weights and ref.model is not model
    assert all(not p.requires_grad for p in ref.model.parameters())


def _cfg():
    return load_config({"model": "tiny-llama", "stage": "dpo", "method": "lora", "data": {"train": "x.jsonl"}})


def _train(cli, tmp_path, method="lora", name="dpo", stage=None, **train):
    data = write_rows(tmp_path / "pref.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("dpo", method, data, tmp_path / "runs", **train)
    cfg.update(name=name, stage=stage or {"name": "dpo"})
    return cli("train", write_config(tmp_path / f"{name}.yaml", cfg), "--quiet")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_end_to_end_from_cli(cli, tmp_path, method):
    rc, out, err = _train(cli, tmp_path, method, eval_before=True)
    assert rc == 0, err[-3000:]
    run = Path(out.strip().splitlines()[-1])
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_margin" in metrics
    # Before the first update the policy is the reference: every margin is 0, so the loss is
    # exactly log 2 per pair — whatever the batch size, if the Trainer counts pairs right.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["step"] == 1 and "loss" in r)
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-4)
    rc, out, err = cli("generate", run, "What colour is snow?", "--max-new-tokens", "4")
    assert rc == 0, err[-2000:]


def test_dpo_from_an_sft_policy(cli, tmp_path, trained_run):
    rc, out, err = _train(cli, tmp_path, "lora", stage={"name": "dpo", "policy": str(trained_run("sft", "lora"))})
    assert rc == 0, err[-3000:]


def test_dpo_policy_must_be_a_language_model_run(cli, tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 4
    data = write_rows(tmp_path / "p.jsonl", rows)
    rm_cfg = tiny_config("reward", "lora", data, tmp_path / "runs")
    rm_cfg["name"] = "rm"
    rc, out, err = cli("train", write_config(tmp_path / "rm.yaml", rm_cfg), "--quiet")
    assert rc == 0, err[-2000:]
    rc, out, err = _train(cli, tmp_path, stage={"name": "dpo", "policy": out.strip().splitlines()[-1]})
    assert rc == 2 and err.startswith("error:") and "is a reward run" in err


def test_negative_nll_weight_is_a_one_line_error(cli, tmp_path):
    rc, out, err = _train(cli, tmp_path, stage={"name": "dpo", "nll_weight": -1})
    assert rc == 2 and err.startswith("error:") and "stage.nll_weight" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_nll_weight_adds_the_chosen_per_token_nll():
    """RPO: loss = DPO + w * mean NLL of chosen response tokens; w=0 leaves plain DPO."""
    model, tokenizer = load_model("tiny-llama")
    batch = _pair_batch(tokenizer)
    policy = lora.apply(model, lora.Config(r=4, alpha=8, dropout=0.0)).eval()
    args = (batch["input_ids"], batch["attention_mask"], batch["response_labels"])
    with torch.no_grad():
        chosen_logp = _reference.sequence_logps(policy, *args)[0].item()
        plain, _ = dpo.DPOLoss(policy, beta=0.1)(policy, batch)
        rpo, _ = dpo.DPOLoss(policy, beta=0.1, nll_weight=0.5)(policy, batch)
    chosen_tokens = int((batch["response_labels"][0, 1:] != -100).sum())
    assert chosen_tokens > 0
    assert plain.item() == pytest.approx(math.log(2), rel=1e-5)  # policy == reference at the start
    assert rpo.item() == pytest.approx(math.log(2) + 0.5 * (-chosen_logp / chosen_tokens), rel=1e-5)


@pytest.mark.parametrize("method", ["none", "lora"])
def test_sequence_logps_on_kept_positions_matches_full_logits(method, monkeypatch):
    """The logits_to_keep path (vocab projection only where a response token is predicted) gives
    the same sums and gradients as projecting every position."""
    model, tokenizer = load_model("tiny-llama")
    if method == "lora":
        model = lora.apply(model, lora.Config(r=4, alpha=8, dropout=0.0))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, 0, 0.1)
    batch = _pair_batch(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_labels"])
    assert _reference._accepts_logits_to_keep(model)
    kept = _reference.sequence_logps(model, *args)
    kept.sum().backward()
    kept_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(_reference, "_accepts_logits_to_keep", lambda m: False)
    full = _reference.sequence_logps(model, *args)
    full.sum().backward()
    assert torch.allclose(kept, full, atol=1e-5), (kept, full)
    # Float summation order differs between the paths: relative 1e-4 on gradients of order 1-10.
    assert kept_grads and all(torch.allclose(g, dict(model.named_parameters())[n].grad, rtol=1e-4, atol=1e-5)
                              for n, g in kept_grads.items())


def _step_zero(calls):
    """The calls made before the first update: eval_before's (no grad), then the first training step's."""
    first_step = next(i for i, (grad, *_) in enumerate(calls) if grad)
    assert first_step > 0, "no evaluation before training"
    return calls[: first_step + 1]


def _record_dpo_losses(monkeypatch) -> list:
    """Record (grad enabled, policy log-probs, reference log-probs, loss) of every dpo_loss call."""
    calls, plain = [], dpo.dpo_loss

    def recording(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, num_pairs=None):
        loss, chosen, rejected = plain(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, num_pairs)
        calls.append((torch.is_grad_enabled(), torch.cat([policy_chosen, policy_rejected]).detach(),
                      torch.cat([ref_chosen, ref_rejected]), loss.detach()))
        return loss, chosen, rejected

    monkeypatch.setattr(dpo, "dpo_loss", recording)
    return calls


@pytest.mark.parametrize("method", ["full", "lora"])
def test_reference_is_the_policy_before_the_first_update_under_bf16(tmp_path, monkeypatch, method):
    """Under mixed precision the Trainer wraps the policy's forward in bf16 autocast after the
    ``full`` reference was copied; the reference runs that same forward, so at step 0 (evaluation
    before training and the first step) both give identical log-probs and the loss is log 2."""
    from tunelab.training import engine, precision

    # bf16 autocast wherever it runs (as on an AMX CPU); the base stays fp32 (train.base_dtype below)
    monkeypatch.setattr(precision, "bf16_support", lambda: precision.Bf16Support(supported=True, fast=True))
    calls = _record_dpo_losses(monkeypatch)
    data = write_rows(tmp_path / "pref.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("dpo", method, data, tmp_path / "runs", max_steps=1, eval_before=True,
                      base_dtype="fp32")
    cfg.update(name="dpo-bf16", stage={"name": "dpo"})
    run = engine.train(cfg, quiet=True)
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"
    for _, policy_logps, ref_logps, loss in _step_zero(calls):
        assert torch.equal(policy_logps, ref_logps), (policy_logps - ref_logps).abs().max()
        assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_policy_dropout_is_off_so_step_zero_still_matches_the_reference(tmp_path, monkeypatch):
    """LoRA with dropout 0.1: the policy trains in train mode, the reference runs in eval mode;
    with the policy's dropout left on the first DPO loss would not be log 2."""
    from tunelab.training import engine

    calls = _record_dpo_losses(monkeypatch)
    data = write_rows(tmp_path / "pref.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("dpo", "lora", data, tmp_path / "runs", max_steps=1, precision="fp32")
    cfg.update(name="dpo-dropout", stage={"name": "dpo"})
    cfg["method"]["dropout"] = 0.1
    engine.train(cfg, quiet=True)
    training_calls = [c for c in calls if c[0]]
    assert training_calls
    _, policy_logps, ref_logps, loss = training_calls[0]
    torch.testing.assert_close(policy_logps, ref_logps, rtol=0, atol=1e-5)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
