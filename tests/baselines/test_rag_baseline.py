"""The RAG baseline: the passages a query gets, the prompt they make, and runs scored by `tunelab eval`.

The index is a real LanceDB directory built once per module over the SYNTHETIC documents of
tests/synthetic_docs.py with the real minilm-l6 encoder (its rankings are what the retrieval
figures test); test files are SYNTHETIC rows written here. tiny-llama is a random model: its
answers exercise the paths, they mean nothing.
"""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_rows
from synthetic_docs import CHUNK_WORDS, OVERLAP, QUESTIONS, write_corpus

from tunelab.baselines import rag
from tunelab.baselines._context import build_prompts
from tunelab.baselines.zeroshot import ZeroShotClassifier

pytestmark = pytest.mark.slow  # loads minilm-l6

VOLCANO_QUESTION = "What is the serial code of the seismometer on the northern rim?"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The SYNTHETIC corpus indexed once: (document files, index directory)."""
    from tunelab.retrieval.index import build_index

    root = tmp_path_factory.mktemp("rag")
    files = write_corpus(root / "docs")
    build_index([str(files["passages"]), str(files["volcano"])], root / "index", id_field="id",
                chunk_words=CHUNK_WORDS, overlap=OVERLAP)
    return files, root / "index"


@pytest.fixture(scope="module")
def index(corpus):
    return rag.open_checked(rag.RAGConfig(model="tiny-llama", index=str(corpus[1])))


@pytest.fixture(scope="module")
def tiny():
    from tunelab.models import load_model

    return load_model("tiny-llama")


def _test_rows(corpus, index) -> tuple[list[dict], float, float]:
    """SYNTHETIC test rows (question, label, gold document ids) and their recall@3 and MRR, by hand."""
    second = index.search(QUESTIONS["bees"], 3)[1].doc  # a real second-ranked document
    assert second != "bees"
    volcano = f"{corpus[0]['volcano'].resolve()}:1"  # a text file's id: "<absolute file>:<row>"
    rows = [  # (question, gold): recall@3, reciprocal rank
        (QUESTIONS["bread"], "bread"),  # first: 1, 1
        (QUESTIONS["chess"], "chess"),  # first: 1, 1
        (QUESTIONS["tides"], "nowhere"),  # not in the index: 0, 0
        (QUESTIONS["bees"], ["bees", "nowhere"]),  # one of two relevant ids, first: 1/2, 1
        (QUESTIONS["bees"], second),  # second: 1, 1/2
        (VOLCANO_QUESTION, volcano),  # first: 1, 1
    ]
    labelled = [{"text": q, "label": "yes" if i % 2 else "no", "doc": gold} for i, (q, gold) in enumerate(rows)]
    return labelled, (1 + 1 + 0 + 0.5 + 1 + 1) / 6, (1 + 1 + 0 + 1 + 0.5 + 1) / 6


def test_prompt_holds_the_top_k_passages_in_rank_order(index, tiny):
    model, tokenizer = tiny
    cfg = rag.RAGConfig(model="tiny-llama", index=str(index.path), labels=["yes", "no"], k=3)
    classifier = ZeroShotClassifier(cfg, model, tokenizer)
    passages = rag.Passages(cfg, index, tokenizer)
    question = QUESTIONS["bees"]
    built = build_prompts(tokenizer, [[classifier.user_turn(question)]], [question], passages, 10_000)
    hits = index.search(question, 3)
    numbered = "\n\n".join(f"[{n}] {hit.text}" for n, hit in enumerate(hits, start=1))
    assert built.chats[0] == [{"role": "user", "content": f"Use the passages below to answer.\n\n{numbered}\n\n"
                                                          f"{classifier.user_turn(question)['content']}"}]
    assert built.kept == [3] and passages.retrieved == [hits]
    # Passages that do not fit are dropped from the end: the best ones stay, in order.
    budget = len(built.ids[0]) - 1
    tight = build_prompts(tokenizer, [[classifier.user_turn(question)]], [question], passages, budget)
    assert tight.kept[0] < 3 and tight.dropped == 3 - tight.kept[0]
    assert tight.chats[0] == passages.render(hits[: tight.kept[0]], [classifier.user_turn(question)])
    assert passages.render([], [classifier.user_turn(question)]) == [classifier.user_turn(question)]  # zero-shot's


def test_passages_are_cut_and_the_template_is_filled_once(index, tiny):
    _, tokenizer = tiny
    cfg = rag.RAGConfig(model="tiny-llama", index=str(index.path), k=1, passage_tokens=8,
                        template="Q: {query}\nSources:\n{passages}")
    passages = rag.Passages(cfg, index, tokenizer)
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "about {passages}"}]
    hit = passages.items([QUESTIONS["chess"]])[0][0]
    rendered = passages.render([hit], chat)
    cut = tokenizer.decode(tokenizer(hit.text, add_special_tokens=False)["input_ids"][:8])
    assert rendered == [chat[0], {"role": "user", "content": f"Q: about {{passages}}\nSources:\n[1] {cut}"}]
    with pytest.raises(ValueError, match=r"must hold \{query\}"):
        rag.RAGConfig(model="tiny-llama", index="i", template="{passages}")


def test_classification_run_eval_reports_retrieval_quality(corpus, index, tmp_path, cli_here):
    rows, recall, mrr = _test_rows(corpus, index)
    test = write_rows(tmp_path / "test.jsonl", rows)
    out = tmp_path / "runs" / "rag"
    rc, stdout, err = cli_here("rag", "baseline", "--model", "tiny-llama", "--index", corpus[1], "--labels", "no,yes",
                               "--gold-field", "doc", "--max-length", "32", "--out", out)
    assert rc == 0, err[-2000:]
    assert stdout.strip() == str(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "classify" and summary["baseline"] == "rag" and summary["k"] == 3
    assert summary["index"] == {"path": str(corpus[1].resolve()), "chunks": len(index), "documents": 5,
                                "embedder": "minilm-l6", "table_version": index.manifest.table_version}
    assert yaml.safe_load((out / "config.yaml").read_text())["rag"]["gold_field"] == "doc"
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--json")
    assert rc == 0, err[-2000:]
    report = json.loads(stdout)["data"]["t"]
    assert report["task"] == "classification" and report["n"] == 6 and report["passages_per_query"] == 3
    assert report["recall_at_3"] == pytest.approx(recall) and report["mrr"] == pytest.approx(mrr)
    assert report["prompt_tokens_per_query"] > 100 and report["retrieval_mode"] == "dense"
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--max-rows", "3")  # the table, the first 3 rows
    assert rc == 0, err[-2000:]
    assert "passages/query 3.00, recall@3 0.667, MRR 0.667" in stdout


def test_generation_run_evals_and_generates_with_retrieval(corpus, index, tmp_path, cli_here):
    rows, recall, mrr = _test_rows(corpus, index)
    test = write_rows(tmp_path / "test.jsonl", [{"instruction": r["text"], "response": "I do not know.",
                                                 "doc": r["doc"]} for r in rows])
    out = tmp_path / "runs" / "rag-gen"
    rc, _, err = cli_here("rag", "baseline", "--model", "tiny-llama", "--index", corpus[1], "--k", "2",
                          "--gold-field", "doc", "--instruction", "Answer briefly.", "--out", out)
    assert rc == 0, err[-2000:]
    assert json.loads((out / "summary.json").read_text())["stage"] == "sft"
    rc, stdout, err = cli_here("eval", out, "--data", f"t={test}", "--generate", "2", "--max-new-tokens", "3", "--json")
    assert rc == 0, err[-2000:]
    report = json.loads(stdout)["data"]["t"]
    assert report["task"] == "causal-lm" and report["n"] == 6 and report["generated"] == 2
    assert report["passages_per_query"] == 2 and report["perplexity"] > 1 and 0 <= report["rouge_l"] <= 1
    # k=2 by hand: the "second" row still finds its document; nothing else changes.
    assert report["recall_at_2"] == pytest.approx(recall) and report["mrr"] == pytest.approx(mrr)
    rc, _, err = cli_here("generate", out, "Where does honey come from?", "--max-new-tokens", "3")
    assert rc == 0, err[-2000:]

    from tunelab.runs.open import load

    chat = rag.prompt(load(out), [{"role": "user", "content": QUESTIONS["tides"]}], max_new_tokens=8)
    hits = index.search(QUESTIONS["tides"], 2)
    assert chat[0] == {"role": "system", "content": "Answer briefly."}
    assert chat[1]["content"] == ("Use the passages below to answer.\n\n" + "\n\n".join(
        f"[{n}] {hit.text}" for n, hit in enumerate(hits, start=1)) + f"\n\n{QUESTIONS['tides']}")
