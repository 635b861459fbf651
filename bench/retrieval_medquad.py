"""Retrieval quality on real medical Q&A: MedQuAD answers indexed, MedQuAD questions as queries.

  python bench/retrieval_medquad.py [--rows 1000] [--queries 500] [--seed 0] [--model minilm-l6]

A seeded subset of distinct MedQuAD answers (medquad_qa.jsonl: question, answer, source) is
indexed with `build_index` (answers only; questions are never indexed). A seeded sample of the
subset's questions is then asked of the index in each mode, dense and hybrid. A question's gold
is its own answer: every indexed row with exactly that question (MedQuAD asks some questions of
several sources), and a hit on any chunk of a gold answer counts. Reported: recall@1, recall@5,
MRR over the top 10, and the machine (CPU model, cores), since wall times depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from _common import scratch_dir  # removes itself when the bench exits

REPO = Path(__file__).resolve().parents[1]
DATA = [REPO / "data/medical/medquad_qa.jsonl", Path("/work/shared/data/medical/medquad_qa.jsonl")]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def subset(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows with distinct answers, chosen by ``seed``, each with an id naming its row in the file."""
    first_by_answer: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        first_by_answer.setdefault(row["answer"].strip(), number)
    chosen = sorted(random.Random(seed).sample(sorted(first_by_answer.values()), n))
    return [{"id": f"medquad-{number}", **rows[number - 1]} for number in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=next((p for p in DATA if p.exists()), DATA[0]))
    parser.add_argument("--rows", type=int, default=1000, help="Distinct answers to index.")
    parser.add_argument("--queries", type=int, default=500, help="Questions to ask (from the indexed rows).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--chunk-words", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=None)
    # 1: on a shared 2-core machine a second OpenMP thread measured slower (it waits for a core)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--work", type=Path, default=None, help="Directory for the subset and the index (default: temporary).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    import lancedb
    import torch

    from tunelab.core.metrics import mrr, recall_at_k
    from tunelab.retrieval.chunk import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP
    from tunelab.retrieval.embed import Embedder
    from tunelab.retrieval.index import build_index, open_index

    torch.set_num_threads(args.threads)

    chunk_words = args.chunk_words or DEFAULT_CHUNK_WORDS
    overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8") if line.strip()]
    picked = subset(rows, args.rows, args.seed)
    work = args.work or scratch_dir("medquad-rag-")
    work.mkdir(parents=True, exist_ok=True)
    docs = work / f"medquad_{args.rows}_seed{args.seed}.jsonl"
    docs.write_text("".join(json.dumps({"id": r["id"], "answer": r["answer"], "source": r["source"]}) + "\n"
                            for r in picked), encoding="utf-8")

    embedder = Embedder(args.model)
    start = time.perf_counter()
    stats = build_index([str(docs)], work / "index", text_field="answer", id_field="id", embedder=embedder,
                        chunk_words=chunk_words, overlap=overlap)
    build_s = time.perf_counter() - start

    gold_by_question: dict[str, set[str]] = {}
    for row in picked:
        gold_by_question.setdefault(row["question"].strip(), set()).add(row["id"])
    questions = random.Random(args.seed + 1).sample(sorted(gold_by_question), min(args.queries, len(gold_by_question)))
    gold = [gold_by_question[q] for q in questions]

    index = open_index(work / "index")
    results = {}
    for mode in ("dense", "hybrid"):
        start = time.perf_counter()
        ranked = [[hit.doc for hit in index.search(q, k=10, mode=mode, embedder=embedder)] for q in questions]
        per_query_ms = 1000 * (time.perf_counter() - start) / len(questions)
        results[mode] = {"recall@1": recall_at_k(ranked, gold, 1), "recall@5": recall_at_k(ranked, gold, 5),
                         "mrr@10": mrr(ranked, gold), "ms_per_query": per_query_ms}

    print(f"MedQuAD retrieval -- {time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} ({args.threads} thread{'s' * (args.threads != 1)}), lancedb {lancedb.__version__}")
    print(f"data:    {args.data} ({len(rows):,} rows); indexed {len(picked):,} distinct answers (seed {args.seed})")
    print(f"index:   {stats['chunks']:,} chunks ({chunk_words} words, overlap {overlap}) embedded with {args.model} "
          f"in {build_s:.1f} s ({stats['chunks'] / build_s:.1f} chunks/s)")
    print(f"queries: {len(questions)} questions of the indexed rows (never indexed themselves); "
          f"gold = their own answers ({sum(map(len, gold)) / len(gold):.2f} per question)")
    print(f"{'mode':<8} {'recall@1':>9} {'recall@5':>9} {'MRR@10':>8} {'ms/query':>9}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['recall@1']:>9.3f} {r['recall@5']:>9.3f} {r['mrr@10']:>8.3f} {r['ms_per_query']:>9.1f}")
    print(json.dumps({"cpu": cpu_model(), "threads": args.threads, "rows": len(picked), "chunks": stats["chunks"], "queries": len(questions),
                      "build_s": round(build_s, 1), **{m: {k: round(v, 4) for k, v in r.items()} for m, r in results.items()}}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
