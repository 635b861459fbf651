"""Rebuild hh_helpful_{train,eval}.jsonl from the HH-RLHF helpful-base file (see README.md).

    python data/preference/make_subset.py /work/shared/data/preference/hh_helpful_base.jsonl
"""
import hashlib
import json
import sys
from pathlib import Path

MAX_CHARS = 900  # prompt + longer response: short dialogues, so 2 CPU cores can train on them
EVAL_SHARE = 5  # 1 in 5 prompts (by hash) is held out


def main(source: str) -> None:
    here = Path(__file__).parent
    rows = [json.loads(line) for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if r["chosen"].strip() and r["rejected"].strip() and r["chosen"].strip() != r["rejected"].strip()
            and len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) <= MAX_CHARS]
    split = {"train": [], "eval": []}
    for row in kept:
        bucket = int(hashlib.sha256(row["prompt"].encode("utf-8")).hexdigest(), 16) % EVAL_SHARE
        split["eval" if bucket == 0 else "train"].append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    for name, part in split.items():
        with open(here / f"hh_helpful_{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        print(f"{name}: {len(part)} pairs")
    print(f"from {len(rows)} rows, {len(kept)} kept (<= {MAX_CHARS} chars, chosen != rejected)")


if __name__ == "__main__":
    main(sys.argv[1])
