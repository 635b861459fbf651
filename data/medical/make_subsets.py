"""Rebuild the medical subsets from ../shared/data/medical/ (PubMedQA PQA-L dev items, MedQuAD).

Split rule, as for the spam data: h = sha256("tunelab-medical:" + key) as an integer; a row is
*test* when h % 5 == 0, else *train*; files are written in order of h, so "first N rows" is a
fixed shuffled sample. key = the PMID (PubMedQA) or the question text (MedQuAD).

- pubmedqa_{train,test}.jsonl: {pmid, question, context, text, label}; label = final_decision
  (yes/no/maybe); text = question + the abstract without its conclusion (what a classifier sees).
- pubmedqa_abstracts.jsonl: {pmid, text}: every dev item's abstract (context + conclusion), the
  documents a retrieval index is built from (the gold document of a question is its own PMID).
- medquad_{train,test}.jsonl: {id, question, answer, source}; MEDQUAD_ROWS rows with distinct
  questions and answers, sampled by h; id = "mq-" + the first 12 hex digits of h.

    python data/medical/make_subsets.py [SOURCE_DIR]     # default: ../shared/data/medical
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_EVERY = 5
MEDQUAD_ROWS = 1500  # enough for a LoRA SFT that moves perplexity; small enough for 2 cores


def key_hash(key: str) -> int:
    return int(hashlib.sha256(("tunelab-medical:" + key).encode("utf-8")).hexdigest(), 16)


def read(path: Path) -> list[dict]:
    # split("\n"), not splitlines(): some texts hold U+2028, which splitlines() breaks on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    labels = Counter(row["label"] for row in rows if "label" in row)
    print(f"{path.name:<26} {len(rows):>5} rows  " + "  ".join(f"{k}={v}" for k, v in sorted(labels.items())))


def pubmedqa(source: Path) -> None:
    full = read(source / "pubmedqa_full.dev.jsonl")
    abstracts = read(source / "pubmedqa_abstracts.dev.text.jsonl")
    assert len(full) == len(abstracts), "abstracts and items must align row by row"
    for item, abstract in zip(full, abstracts):  # the abstracts file has no PMID: check the alignment
        assert abstract["text"].startswith(item["context"][:200]), item["pmid"]
    rows = [{"pmid": r["pmid"], "question": r["question"], "context": r["context"],
             "text": f"{r['question']}\n\n{r['context']}", "label": r["final_decision"]} for r in full]
    rows.sort(key=lambda r: key_hash(r["pmid"]))
    write(HERE / "pubmedqa_train.jsonl", [r for r in rows if key_hash(r["pmid"]) % TEST_EVERY])
    write(HERE / "pubmedqa_test.jsonl", [r for r in rows if not key_hash(r["pmid"]) % TEST_EVERY])
    docs = sorted(({"pmid": item["pmid"], "text": a["text"]} for item, a in zip(full, abstracts)),
                  key=lambda r: key_hash(r["pmid"]))
    write(HERE / "pubmedqa_abstracts.jsonl", docs)


def medquad(source: Path) -> None:
    seen_q, seen_a, rows = set(), set(), []
    for r in sorted(read(source / "medquad_qa.jsonl"), key=lambda r: key_hash(r["question"])):
        if r["question"] in seen_q or r["answer"] in seen_a or not r["answer"].strip():
            continue  # one row per question and per answer: a test question's answer is never in train
        seen_q.add(r["question"]), seen_a.add(r["answer"])
        h = key_hash(r["question"])
        rows.append({"id": f"mq-{h:x}"[:15], "question": r["question"], "answer": r["answer"], "source": r["source"]})
        if len(rows) == MEDQUAD_ROWS:
            break
    write(HERE / "medquad_train.jsonl", [r for r in rows if key_hash(r["question"]) % TEST_EVERY])
    write(HERE / "medquad_test.jsonl", [r for r in rows if not key_hash(r["question"]) % TEST_EVERY])


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "medical"
    pubmedqa(src)
    medquad(src)
