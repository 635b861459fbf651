"""Stage `reward`: Bradley–Terry parity, rating -> pairs, end-to-end CLI runs, `tunelab score`, bad input."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SYNTHETIC_ROWS, tiny_config, write_config, write_rows
from tunelab.stages import _pairs, reward

RATINGS = [  # SYNTHETIC: two prompts, three rated responses each (one tie)
    {"prompt": "What colour is snow?", "response": "White.", "score": 5},
    {"prompt": "What colour is snow?", "response": "Green.", "score": 1},
    {"prompt": "What colour is snow?", "response": "I don't know.", "score": 1},
    {"prompt": "What colour is grass?", "response": "Green.", "score": 4},
    {"prompt": "What colour is grass?", "response": "Blue.", "score": 2},
    {"prompt": "What colour is grass?", "response": "No idea.", "score": 3},
] * 2  # each response twice: rated twice counts once (mean score)


def test_bradley_terry_matches_plain_formula():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(7, generator=g), torch.randn(7, generator=g)
    expected = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 7
    assert reward.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_ratings_become_pairs_higher_beats_lower_same_prompt():
    pairs, ties = _pairs.ratings_to_pairs(RATINGS)
    as_tuples = {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}
    assert as_tuples == {
        ("What colour is snow?", "White.", "Green."),
        ("What colour is snow?", "White.", "I don't know."),
        ("What colour is grass?", "Green.", "No idea."),
        ("What colour is grass?", "Green.", "Blue."),
        ("What colour is grass?", "No idea.", "Blue."),
    }
    assert ties == 1  # Green. vs I don't know. (both 1) makes no pair
    assert len(pairs) == 5


def test_hh_transcript_becomes_chat_turns():
    prompt = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: what colour is snow?\n\nAssistant:"
    assert _pairs.prompt_messages(prompt) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "what colour is snow?"}]
    assert _pairs.prompt_messages("plain question") == [{"role": "user", "content": "plain question"}]


def _train(cli, tmp_path, rows, method="lora", model="tiny-llama", name="rm", data_options=None, **train):
    data = write_rows(tmp_path / f"{name}.jsonl", rows)
    cfg = tiny_config("reward", method, data, tmp_path / "runs", **train)
    cfg.update(model=model, name=name)
    cfg["data"].update(data_options or {})
    rc, out, err = cli("train", write_config(tmp_path / f"{name}.yaml", cfg))  # not --quiet: tests read its notes
    return rc, out, err


@pytest.mark.parametrize("method,model", [("lora", "tiny-llama"), ("full", "tiny-llama"), ("head", "tiny-bert")])
def test_reward_end_to_end_from_cli(cli, tmp_path, method, model):
    rc, out, err = _train(cli, tmp_path, SYNTHETIC_ROWS["preference"], method, model, eval_before=True)
    assert rc == 0, err[-3000:]
    run = Path(out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["stage"] == "reward"
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_margin" in metrics
    assert any("accuracy" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    rc, out, err = cli("score", run, "--prompt", "What colour is snow?", "--response", "White.")
    assert rc == 0, err[-2000:]
    assert math.isfinite(float(out.strip().splitlines()[-1]))


def test_reward_from_ratings_reports_pairs_and_evaluates_rank_correlation(cli, tmp_path):
    rc, out, err = _train(cli, tmp_path, RATINGS, "lora", data_options={"eval_fraction": 0.0})
    assert rc == 0, err[-3000:]
    assert "ratings ->" in err and "pairs" in err
    run = Path(out.strip().splitlines()[-1])
    ratings = write_rows(tmp_path / "ratings_test.jsonl", RATINGS)
    rc, out, err = cli("eval", run, "--data", f"r={ratings}", "--json")
    assert rc == 0, err[-3000:]
    report = json.loads(out)["data"]["r"]
    assert report["task"] == "reward" and report["ratings"] == len(RATINGS)
    assert report["n"] == 5  # pairs: snow 5 > 1 (twice), grass 4 > 3 > 2 (three); the tie (1, 1) makes none
    assert -1.0 <= report["spearman"] <= 1.0 and -1.0 <= report["kendall_tau"] <= 1.0


def test_score_refuses_a_run_that_is_not_a_reward_model(cli, tmp_path, trained_run):
    rc, out, err = cli("score", trained_run("sft", "lora"), "--prompt", "p", "--response", "r")
    assert rc == 2 and err.startswith("error:") and "not a reward model" in err


@pytest.mark.parametrize("rows,needle", [
    ([{"prompt": "q", "chosen": "same", "rejected": "same"}] * 4, "row 1: fields 'chosen' and 'rejected' are identical"),
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": " ", "rejected": "b"}],
     "row 2: field 'chosen' is empty"),
    ([{"prompt": "q", "response": "a", "score": 1}, {"prompt": "q", "response": "b", "score": 9}],
     "row 2: field 'score' is 9, outside the rating range 1..5"),
    ([{"prompt": "q", "response": "", "score": 1}], "row 1: field 'response' is empty"),
])
def test_bad_preference_input_is_one_line_error(cli, tmp_path, rows, needle):
    rc, out, err = _train(cli, tmp_path, rows)
    assert rc == 2, err[-2000:]
    assert err.startswith("error:") and needle in err and len(err.strip().splitlines()) == 1
