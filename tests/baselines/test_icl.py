"""The ICL baseline: which demonstrations a query gets, the prompt they make, and runs scored by `tunelab eval`.

Every dataset here is SYNTHETIC (made-up sentences written by the test). tiny-llama is a random
model: its scores exercise the paths, they mean nothing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import SYNTHETIC_ROWS, write_rows
from tunelab.baselines._context import build_prompts
from tunelab.baselines.icl import Demo, Demonstrations, ICLConfig, read_pool
from tunelab.baselines.zeroshot import ZeroShotClassifier

# SYNTHETIC: messages about a few topics, so that "nearest" has a right answer.
TOPICS = {
    "weather": ["rain is expected all afternoon", "a sunny and warm day ahead", "snow storms close the roads"],
    "food": ["the pasta recipe needs garlic", "bake the bread for forty minutes", "a spicy curry with rice"],
    "sport": ["the striker scored twice tonight", "our team won the tennis final", "a marathon through the city"],
}
POOL = [Demo(text, topic) for topic, texts in TOPICS.items() for text in texts]
QUERIES = ["heavy rain and wind tomorrow", "how long to cook rice", "the goalkeeper saved a penalty"]


def _turns(demo: Demo) -> list[dict]:
    return [{"role": "user", "content": demo.query}, {"role": "assistant", "content": demo.answer}]


def _config(**settings) -> ICLConfig:
    return ICLConfig(**{"model": "tiny-llama", "train": "unused.jsonl", "labels": list(TOPICS), **settings})


@pytest.fixture(scope="module")
def embedder():
    from tunelab.retrieval.embed import Embedder

    return Embedder("minilm-l6")


@pytest.fixture(scope="module")
def tiny():
    from tunelab.models import load_model

    return load_model("tiny-llama")


def test_nearest_demos_are_the_true_nearest(embedder):
    vectors = embedder.encode([d.query for d in POOL])
    demos = Demonstrations(_config(k=3, select="nearest"), POOL, _turns, embedder, vectors)
    got = demos.select(QUERIES)
    # Brute force: cosine of every (query, pool) pair from the raw vectors, ranked by hand.
    q = embedder.encode(QUERIES)
    for i, row in enumerate(got):
        cosines = [float(q[i] @ v / (np.linalg.norm(q[i]) * np.linalg.norm(v))) for v in vectors]
        assert row == sorted(range(len(POOL)), key=lambda j: -cosines[j])[:3]
    assert [POOL[row[0]].answer for row in got] == ["weather", "food", "sport"]  # and they make sense


def test_random_demos_are_seeded_and_reproducible():
    first = Demonstrations(_config(k=3, select="random", seed=7), POOL, _turns).select(QUERIES)
    again = Demonstrations(_config(k=3, select="random", seed=7), POOL, _turns).select(QUERIES[::-1])[::-1]
    other = Demonstrations(_config(k=3, select="random", seed=8), POOL, _turns).select(QUERIES)
    assert first == again  # per query, whatever the order (or the other queries) in the file
    assert first != other
    assert all(len(set(row)) == 3 and all(0 <= j < len(POOL) for j in row) for row in first)
    assert len({tuple(row) for row in first}) > 1  # each query draws its own


@pytest.mark.parametrize("select", ["random", "nearest"])
def test_no_query_is_its_own_demonstration(select, embedder):
    pool = POOL + [Demo(POOL[0].query, "weather")]  # a duplicate: both copies must stay out
    vectors = embedder.encode([d.query for d in pool]) if select == "nearest" else None
    demos = Demonstrations(_config(k=len(pool), select=select), pool, _turns, embedder, vectors)
    queries = [d.query for d in pool]
    for query, row in zip(queries, demos.select(queries)):
        assert query not in [pool[j].query for j in row]
        assert len(row) == len(pool) - len(demos.by_text[query])  # everything else is still available


def test_prompt_holds_the_demos_in_order_then_the_query(tiny):
    model, tokenizer = tiny
    cfg = _config(k=2, select="random", label_words={"weather": "w", "food": "f", "sport": "s"})
    classifier = ZeroShotClassifier(cfg, model, tokenizer)
    context = Demonstrations(cfg, POOL, lambda d: [classifier.user_turn(d.query), classifier.answer_turn(d.answer)])
    classifier.context = context
    chosen = context.select([QUERIES[0]])[0]
    built = build_prompts(tokenizer, [[classifier.user_turn(QUERIES[0])]], [QUERIES[0]], context, 10_000)
    expected = []
    for j in chosen:
        expected += [classifier.user_turn(POOL[j].query), {"role": "assistant", "content": cfg.words()[
            cfg.labels.index(POOL[j].answer)]}]
    assert built.chats[0] == expected + [classifier.user_turn(QUERIES[0])]
    assert built.kept == [2] and built.dropped == 0
    # Without context the prompt is exactly zero-shot's; with it, zero-shot's prompt is its tail.
    zero_shot = ZeroShotClassifier(cfg, model, tokenizer).prompt_ids(QUERIES[0])
    with_demos = classifier.prompt_ids(QUERIES[0])
    assert len(with_demos) > len(zero_shot)
    system = [{"role": "system", "content": "be brief"}]  # generation: a system message stays first
    assert context.render(chosen, system + [{"role": "user", "content": "q"}])[0] == system[0]


def test_demos_that_do_not_fit_are_dropped_from_the_end(tiny):
    model, tokenizer = tiny
    cfg = _config(k=4, select="random")
    classifier = ZeroShotClassifier(cfg, model, tokenizer)
    context = Demonstrations(cfg, POOL, lambda d: [classifier.user_turn(d.query), classifier.answer_turn(d.answer)])
    chosen = context.select([QUERIES[1]])[0]
    full = build_prompts(tokenizer, [[classifier.user_turn(QUERIES[1])]], [QUERIES[1]], context, 10_000)
    budget = len(full.ids[0]) - 1  # one token short of all four
    cut = build_prompts(tokenizer, [[classifier.user_turn(QUERIES[1])]], [QUERIES[1]], context, budget)
    kept = cut.kept[0]
    assert kept < 4 and cut.dropped == 4 - kept and len(cut.ids[0]) <= budget
    assert cut.chats[0] == context.render(chosen[:kept], [classifier.user_turn(QUERIES[1])])  # the first ones stay


def test_read_pool_checks_the_train_file(tmp_path):
    rows = [{"text": f"{t} {i}", "label": topic} for i, (topic, texts) in enumerate(TOPICS.items()) for t in texts]
    train = write_rows(tmp_path / "train.jsonl", rows)
    pool, digest = read_pool(_config(train=str(train)))
    assert len(pool) == 9 and len(digest) == 64
    assert read_pool(_config(train=str(train)))[1] == digest  # the content decides the digest
    from tunelab import TunelabError

    with pytest.raises(TunelabError, match=r"no example of label\(s\) \['music'\]"):
        read_pool(_config(train=str(train), labels=[*TOPICS, "music"]))
    with pytest.raises(TunelabError, match="k=10, but train .* only 9"):
        read_pool(_config(train=str(train), k=10))


# --------------------------------------------------------------------------- runs, through the CLI


def _labelled(n: int) -> list[dict]:  # SYNTHETIC spam/ham lines
    spam = ["win a free prize now", "cheap pills click here", "urgent claim your cash"]
    ham = ["see you at lunch", "meeting moved to 3pm", "thanks for the notes"]
    return [{"text": f"{(spam if i % 2 else ham)[i % 3]} {i}", "label": "spam" if i % 2 else "ham"} for i in range(n)]


def test_classification_icl_run_and_eval(tmp_path, cli_here):
    train = write_rows(tmp_path / "train.jsonl", _labelled(12))
    test = write_rows(tmp_path / "test.jsonl", _labelled(14)[8:])  # rows 8..11 are in train too: excluded
    out = tmp_path / "runs" / "icl"
    rc, stdout, err = cli_here("icl", "--model", "tiny-llama", "--train", train, "--k", "2", "--select", "nearest",
                               "--labels", "ham,spam", "--label-word", "ham=no", "--label-word", "spam=yes",
                               "--max-length", "16", "--out", out)
    assert rc == 0, err[-2000:]
    assert stdout.strip() == str(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "classify" and summary["baseline"] == "icl" and summary["demo_pool"] == 12
    assert yaml.safe_load((out / "config.yaml").read_text())["icl"]["k"] == 2
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--json")
    assert rc == 0, err[-2000:]
    report = json.loads(stdout)["data"]["t"]
    assert report["task"] == "classification" and report["n"] == 6 and report["demos_per_query"] == 2
    assert report["prompt_tokens_per_query"] > 0 and report["score_seconds_per_query"] > 0
    assert (out / "demo_embeddings.npz").is_file() and report["pool_embed_seconds"] > 0
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--json")  # the cache: no embedding again
    assert rc == 0 and json.loads(stdout)["data"]["t"]["pool_embed_seconds"] == 0.0
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}")  # the table shows what answers cost
    assert rc == 0 and "prompt tokens/query" in stdout and "demonstrations/query 2.00" in stdout

    write_rows(train, _labelled(12)[::-1][:11])  # the pool changed under the run: refused, not silently used
    rc, _, err = cli_here("eval", out, "--data", f"t={test}")
    assert rc == 2 and "has changed since this ICL run was made" in err


def test_generation_runs_eval_with_generate_and_generate(tmp_path, cli_here):
    train = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    test = write_rows(tmp_path / "test.jsonl", SYNTHETIC_ROWS["alpaca"][:4])
    for name, extra in (("icl", ("--train", train, "--k", "2", "--select", "random")), ("zeroshot", ())):
        out = tmp_path / "runs" / name
        rc, _, err = cli_here(name, "--model", "tiny-llama", *extra, "--out", out)
        assert rc == 0, err[-2000:]
        assert json.loads((out / "summary.json").read_text())["stage"] == "sft"
        rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--generate", "3", "--max-new-tokens", "4",
                                   "--json")
        assert rc == 0, err[-2000:]
        report = json.loads(stdout)["data"]["t"]
        assert report["task"] == "causal-lm" and report["n"] == 4 and report["generated"] == 3
        assert 0.0 <= report["rouge_l"] <= 1.0 and report["max_new_tokens"] == 4 and len(report["samples"]) == 3
        assert report["perplexity"] > 1 and report["generate_seconds_per_query"] > 0
        assert report.get("demos_per_query", 0) == (2 if name == "icl" else 0)
        rc, stdout, err = cli_here("generate", out, "What colour is snow?", "--max-new-tokens", "3")
        assert rc == 0, err[-2000:]  # a generation baseline is a generator


def test_generation_prompt_puts_demos_before_the_conversation(tmp_path):
    from tunelab.baselines import icl
    from tunelab.runs.open import load

    train = write_rows(tmp_path / "dolly.jsonl", SYNTHETIC_ROWS["dolly"])
    out = tmp_path / "runs" / "icl"
    from tunelab.runs.baseline import create_baseline_run

    create_baseline_run(out, "icl", ICLConfig(model="tiny-llama", train=str(train), k=3, select="random",
                                              instruction="Answer in three words."))
    chat = icl.prompt(load(out), [{"role": "user", "content": "What colour is snow?"}], max_new_tokens=8)
    assert [m["role"] for m in chat] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert chat[0]["content"] == "Answer in three words." and chat[-1]["content"] == "What colour is snow?"
    assert all(m["content"].startswith("It is ") for m in chat[2:-1:2])  # the dolly replies, as demonstrations
