"""Rebuild the fixed train/test splits of the spam data from ../shared/data/spam/.

Rule: h = sha256("tunelab-spam:" + text) read as a big integer. A row is in *test* when
h % 5 == 0 (about 20%), else in *train*. Each split file is written in order of h, so its
first N rows are a deterministic, shuffled sample (the fast demo profile uses that).
`sms_train_200.jsonl` is the first 200 rows of `sms_train.jsonl`: a small in-domain
fine-tuning set with the natural class balance.

    python data/spam/make_splits.py [SOURCE_DIR]     # default: ../shared/data/spam
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = {"email": "email_enron1.jsonl", "sms": "sms_uci.jsonl"}
TEST_EVERY = 5  # 1 in 5 rows goes to test
SMS_VAL = 500  # rows after the fine-tuning set: the validation split for sweeps
SMALL_SMS = 200


def text_hash(text: str) -> int:
    return int(hashlib.sha256(("tunelab-spam:" + text).encode("utf-8")).hexdigest(), 16)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False) + "\n")


def main(source_dir: Path) -> None:
    for domain, filename in SOURCES.items():
        rows = [json.loads(line) for line in (source_dir / filename).read_text(encoding="utf-8").splitlines() if line.strip()]
        rows.sort(key=lambda row: text_hash(row["text"]))
        splits = {
            "train": [r for r in rows if text_hash(r["text"]) % TEST_EVERY != 0],
            "test": [r for r in rows if text_hash(r["text"]) % TEST_EVERY == 0],
        }
        if domain == "sms":
            splits["train_200"] = splits["train"][:SMALL_SMS]
            splits["val"] = splits["train"][SMALL_SMS : SMALL_SMS + SMS_VAL]  # sweeps choose on it, never on test
        for split, subset in splits.items():
            out = HERE / f"{domain}_{split}.jsonl"
            write_jsonl(out, subset)
            counts = Counter(r["label"] for r in subset)
            print(f"{out.name:<22} {len(subset):>5} rows  " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "spam")
