"""RAG vs zero-shot on real PubMedQA: does retrieving the abstracts help a small instruct model?

  python bench/rag_pubmedqa.py [--model smollm2-135m] [--k 2] [--max-length 640] [--passage-tokens N]
                               [--rows 99] [--work DIR]

The 500 PubMedQA abstracts (data/medical/pubmedqa_abstracts.jsonl, each with its conclusion) are
indexed with `build_index` (minilm-l6, default chunking, ids from ``pmid``); then two baseline runs
of the same model and instruction classify the test questions yes/no/maybe
(data/medical/pubmedqa_test.jsonl: ``text`` = question + abstract without its conclusion): zero-shot,
and RAG with the k best chunks before each query (gold field ``pmid``). Both are scored by the
library's `tunelab eval`. Reported: accuracy, macro-F1, recall@k, MRR, prompt tokens and seconds per
query, and the machine. The majority class (yes) scores 0.545 accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "medical"
INSTRUCTION = ("Does the study below answer its research question with yes, no or maybe? "
               "Possible answers: {choices}. Reply with exactly one of these words.")
sys.path.insert(0, str(REPO / "bench"))
from retrieval_medquad import cpu_model  # noqa: E402  (the same machine line as the other bench)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=640, help="tokens kept of each query (640: none cut)")
    parser.add_argument("--passage-tokens", type=int, default=None, help="tokens kept of each passage")
    parser.add_argument("--rows", type=int, default=None, help="score only the first N test rows")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-rag-pubmedqa"))
    args = parser.parse_args()

    from tunelab.baselines.rag import RAGConfig
    from tunelab.baselines.zeroshot import ZeroShotConfig
    from tunelab.evaluate import evaluate
    from tunelab.retrieval.index import build_index
    from tunelab.runs.baseline import create_baseline_run

    started = time.perf_counter()
    stats = build_index([str(DATA / "pubmedqa_abstracts.jsonl")], args.work / "index", id_field="pmid")
    print(f"index: {stats['documents']} abstracts, {stats['chunks']} chunks "
          f"({stats['new_chunks']} embedded now, {time.perf_counter() - started:.0f} s)", flush=True)
    common = {"model": args.model, "labels": ["yes", "no", "maybe"], "instruction": INSTRUCTION,
              "max_length": args.max_length}
    runs = {
        "zero-shot": create_baseline_run(args.work / "zeroshot", "zeroshot", ZeroShotConfig(**common), overwrite=True),
        f"rag k={args.k}": create_baseline_run(
            args.work / "rag", "rag", RAGConfig(**common, index=str(args.work / "index"), k=args.k, gold_field="pmid",
                                                passage_tokens=args.passage_tokens), overwrite=True),
    }
    test = str(DATA / "pubmedqa_test.jsonl")
    rows = []
    for name, run in runs.items():
        report = evaluate(run, {"test": test}, max_rows=args.rows, batch_size=4)["data"]["test"]
        rows.append((name, report))
        print(f"{name}: done in {report['eval_seconds']:.0f} s", flush=True)
    recall = f"recall_at_{args.k}"
    print(f"\nPubMedQA test ({rows[0][1]['n']} rows), {args.model}, max_length {args.max_length}, passage_tokens "
          f"{args.passage_tokens or args.max_length} -- {cpu_model()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'approach':<10} {'accuracy':>9} {'macro-F1':>9} {'recall@' + str(args.k):>9} {'MRR':>6} "
          f"{'tokens/q':>9} {'s/query':>8}")
    for name, r in rows:
        print(f"{name:<10} {r['accuracy']:>9.3f} {r['macro']['f1']:>9.3f} {r.get(recall, float('nan')):>9.3f} "
              f"{r.get('mrr', float('nan')):>6.3f} {r['prompt_tokens_per_query']:>9.1f} "
              f"{r['score_seconds_per_query']:>8.2f}")
    for name, r in rows:
        print(f"{name}: predicted " + ", ".join(f"{label} {sum(col)}" for label, col in
                                                zip(r["labels"], zip(*r["confusion_matrix"]))))
    print("majority class (yes): accuracy 0.545")


if __name__ == "__main__":
    main()
