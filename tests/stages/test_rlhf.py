"""Stage `rlhf`: RLOO advantages and KL-penalised returns by hand, prompt counting in the Trainer,
an end-to-end CLI run against a tiny reward model, bad input."""
import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows
from tunelab.stages import rlhf


def test_rloo_advantage_is_leave_one_out():
    returns = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0.0]])
    assert torch.allclose(rlhf.rloo_advantages(returns), expected)


def test_rloo_returns_and_advantages_by_hand(monkeypatch):
    """returns = r - beta * (log pi - log ref); advantage = return - mean of the other k-1 returns;
    loss = -sum(advantage * log pi) / (prompts * k). Two prompts, k = 2, beta = 0.5:

        r     = [1, 0 | 2, 2]      log pi - log ref = [1, -1 | 0, 2]
        R     = [0.5, 0.5 | 2, 1]  advantages       = [0, 0 | 1, -1]

    The better reward of the first prompt's first sample is exactly paid for by its KL.
    """
    logps = torch.tensor([-1.0, -3.0, -2.0, -2.0], requires_grad=True)
    ref_logps = torch.tensor([-2.0, -2.0, -2.0, -4.0])
    rewards = [1.0, 0.0, 2.0, 2.0]
    prompt = torch.tensor([[5, 6], [7, 8]])
    monkeypatch.setattr(rlhf.RLOOLoss, "_generate", lambda self, model, ids, mask, sample: torch.cat(
        [ids.repeat_interleave(2, 0), torch.tensor([[9, 2]] * 4)], dim=1))
    monkeypatch.setattr(rlhf.RLOOLoss, "_log_ratio", lambda self, *args: (logps, logps.detach() - ref_logps))
    monkeypatch.setattr(rlhf, "reward_score", lambda loaded, prompts, texts: rewards)

    stage = types.SimpleNamespace(samples_per_prompt=2, beta=0.5, max_new_tokens=2)
    tokenizer = types.SimpleNamespace(eos_token_id=2, pad_token_id=0, batch_decode=lambda ids, **_: ["x"] * len(ids))
    loss_fn = rlhf.RLOOLoss(types.SimpleNamespace(stage=stage), nn.Linear(1, 1), tokenizer,
                            types.SimpleNamespace(model=nn.Linear(1, 1)))
    batch = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "prompts": ["p", "q"]}
    loss, _ = loss_fn(nn.Linear(1, 1), batch, 2)
    advantages = torch.tensor([0.0, 0.0, 1.0, -1.0])
    assert loss.item() == pytest.approx(-(advantages * logps.detach()).sum().item() / 4)
    loss.backward()
    torch.testing.assert_close(logps.grad, -advantages / 4)

    logps.grad = None
    stage.beta = 0.0  # no penalty: the higher reward alone wins
    loss, _ = loss_fn(nn.Linear(1, 1), batch, 2)
    loss.backward()
    torch.testing.assert_close(logps.grad, -torch.tensor([1.0, -1.0, 0.0, 0.0]) / 4)


def test_rloo_advantage_sign_follows_the_return():
    returns = torch.tensor([[3.0, 1.0, 2.0], [-1.0, -1.0, -1.0]])
    advantages = rlhf.rloo_advantages(returns)
    assert advantages[0, 0] > 0 > advantages[0, 1]  # best above the others' mean, worst below
    assert advantages[0].argmax() == returns[0].argmax() and advantages[0].argmin() == returns[0].argmin()
    torch.testing.assert_close(advantages[1], torch.zeros(3))  # equal returns: no preference
    torch.testing.assert_close(advantages.sum(1), torch.zeros(2))  # k/(k-1) x centred returns sum to 0


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("rm")
    data = write_rows(root / "pref.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("reward", "lora", data, root / "runs", max_steps=2)
    cfg["name"] = "rm"
    rc, out, err = run_cli("train", write_config(root / "rm.yaml", cfg), "--quiet")
    assert rc == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def _rlhf(cli, tmp_path, stage, method="lora", name="rl", **train):
    data = write_rows(tmp_path / "prompts.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("rlhf", method, data, tmp_path / "runs", **train)
    cfg.update(name=name, stage={"name": "rlhf", "samples_per_prompt": 2, "max_new_tokens": 6, **stage})
    return cli("train", write_config(tmp_path / f"{name}.yaml", cfg), "--quiet")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_rlhf_end_to_end_from_cli(cli, tmp_path, reward_run, method):
    rc, out, err = _rlhf(cli, tmp_path, {"reward_model": str(reward_run)}, method, max_steps=2, eval_before=True)
    assert rc == 0, err[-3000:]
    run = Path(out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "reward" in r]
    assert steps and all({"reward", "kl", "response_length"} <= set(r) for r in steps)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert {"eval_reward", "eval_ref_reward", "eval_win_rate", "eval_kl"} <= set(metrics)
    before = next(r for r in records if r.get("step") == 0 and "eval_reward" in r)
    assert before["eval_win_rate"] == 0.5 and before["eval_reward"] == pytest.approx(before["eval_ref_reward"])


def test_rlhf_without_a_reward_model_is_one_line_error(cli, tmp_path):
    rc, out, err = _rlhf(cli, tmp_path, {})
    assert rc == 2 and err.startswith("error:") and "stage.reward_model is not set" in err
    assert len(err.strip().splitlines()) == 1


def test_rlhf_reward_model_must_be_a_reward_run(cli, tmp_path, trained_run):
    rc, out, err = _rlhf(cli, tmp_path, {"reward_model": str(trained_run("sft", "lora"))})
    assert rc == 2 and err.startswith("error:") and "stage.reward_model" in err and "must be a finished reward run" in err


@pytest.mark.parametrize("name", ["sft", "reward", "rlhf", "dpo"])
def test_example_configs_validate(name):
    from conftest import EXAMPLES_DIR
    from tunelab.config import load_config

    cfg = load_config(EXAMPLES_DIR / "rlhf" / f"{name}.yaml")
    assert cfg.stage.name == name and cfg.model == "smollm2-135m"


def test_the_trainer_counts_every_prompt_of_a_batch(tmp_path, monkeypatch, reward_run):
    """Causal-LM Trainers count labels[..., 1:] (one fewer per batch); per-prompt batches carry
    shift_labels, counted as is. Checked on the real Trainer: with 2 prompts per micro-batch and
    2 micro-batches per step, the loss is normalised by 4 prompts on every micro-batch."""
    from tunelab.training import engine

    seen, plain = [], rlhf.RLOOLoss.__call__

    def recording(self, model, batch, num_items_in_batch=None):
        if model.training:
            seen.append((len(batch["prompts"]), int(num_items_in_batch)))
        return plain(self, model, batch, num_items_in_batch)

    monkeypatch.setattr(rlhf.RLOOLoss, "__call__", recording)
    data = write_rows(tmp_path / "prompts.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("rlhf", "lora", data, tmp_path / "runs", max_steps=1, batch_size=2, grad_accum=2)
    cfg.update(name="rl-count", stage={"name": "rlhf", "reward_model": str(reward_run), "samples_per_prompt": 2,
                                       "max_new_tokens": 2})
    engine.train(cfg, quiet=True)
    assert seen == [(2, 4), (2, 4)], seen

@pytest.mark.parametrize("method", ["full", "lora"])
def test_reference_is_the_policy_before_the_first_update_under_bf16(tmp_path, monkeypatch, reward_run, method):
    """The Trainer wraps the policy's forward in bf16 autocast after the ``full`` reference was
    copied; the reference runs that same forward, so before the first update the log-ratio of
    every response is exactly 0 and greedy policy and reference responses are the same."""
    from tunelab.training import engine, precision

    # bf16 autocast wherever it runs (as on an AMX CPU); the base stays fp32 (train.base_dtype below)
    monkeypatch.setattr(precision, "bf16_support", lambda: precision.Bf16Support(supported=True, fast=True))
    calls, plain = [], rlhf.RLOOLoss._log_ratio

    def recording(self, model, *args):
        logps, kl = plain(self, model, *args)
        calls.append((model.training, kl))
        return logps, kl

    monkeypatch.setattr(rlhf.RLOOLoss, "_log_ratio", recording)
    data = write_rows(tmp_path / "prompts.jsonl", SYNTHETIC_ROWS["preference"])
    cfg = tiny_config("rlhf", method, data, tmp_path / "runs", max_steps=1, eval_before=True,
                      base_dtype="fp32")
    cfg.update(name="rl-bf16", stage={"name": "rlhf", "reward_model": str(reward_run), "samples_per_prompt": 2,
                                      "max_new_tokens": 6})
    run = engine.train(cfg, quiet=True)
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"
    first_step = next(i for i, (training, _) in enumerate(calls) if training)
    assert first_step > 0, "no evaluation before training"
    for _, kl in calls[: first_step + 1]:
        assert torch.equal(kl, torch.zeros_like(kl)), kl
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    before = next(r for r in records if r.get("step") == 0 and "eval_reward" in r)
    assert before["eval_kl"] == 0.0 and before["eval_win_rate"] == 0.5
    assert before["eval_reward"] == before["eval_ref_reward"]
