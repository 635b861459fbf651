"""The real data shipped under data/: every file is documented, parses with tunelab's reader, and has
the rows, labels and splits its README states (the counts are read from the README tables)."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from tunelab.data import load_file

DATA = REPO_ROOT / "data"
FORMATS = {"instruct": "instruction", "preference": "preference", "spam": "classification", "text": "text",
           "medical": {"pubmedqa_train": "classification", "pubmedqa_test": "classification",
                       "pubmedqa_abstracts": "text", "medquad_train": "instruction", "medquad_test": "instruction"}}


def _table(readme: Path, columns: int) -> dict[Path, list[int]]:
    """README table rows | `file` | n | n ... | -> {path: [numbers]} (paths relative to the README)."""
    rows = {}
    for line in readme.read_text().splitlines():
        match = re.match(r"^\| `([^`]+\.jsonl)` \|" + r" ([\d,]+) \|" * columns, line)
        if match:
            rows[readme.parent / match.group(1)] = [int(n.replace(",", "")) for n in match.groups()[1:]]
    return rows


DOCUMENTED = {**_table(DATA / "README.md", 1), **_table(DATA / "preference" / "README.md", 1),
              **_table(DATA / "spam" / "README.md", 3), **_table(DATA / "medical" / "README.md", 1),
              **_table(DATA / "text" / "README.md", 1)}


def _raw(path: Path) -> list[dict]:
    # split("\n"), not splitlines(): some texts hold U+2028, which splitlines() breaks on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_every_shipped_data_file_is_documented():
    shipped = set(DATA.rglob("*.jsonl"))
    assert shipped and shipped == set(DOCUMENTED), (f"undocumented: {sorted(map(str, shipped - set(DOCUMENTED)))}; "
                                                    f"documented but missing: {sorted(map(str, set(DOCUMENTED) - shipped))}")


@pytest.mark.parametrize("path", sorted(DOCUMENTED), ids=lambda p: str(p.relative_to(DATA)))
def test_file_parses_with_the_documented_format_and_counts(path):
    fmt, rows = load_file(str(path))
    expected = FORMATS[path.parent.name]
    assert fmt == (expected[path.stem] if isinstance(expected, dict) else expected)
    numbers = DOCUMENTED[path]
    assert len(rows) == numbers[0], f"{path.name}: {len(rows)} rows, README says {numbers[0]}"
    if path.parent.name == "spam":  # | rows | ham | spam |
        assert Counter(row["label"] for row in rows) == {"ham": numbers[1], "spam": numbers[2]}
    if fmt == "preference":
        assert all(row["chosen"].strip() != row["rejected"].strip() for row in rows)


def _spam_hash(text: str) -> int:
    return int(hashlib.sha256(("tunelab-spam:" + text).encode("utf-8")).hexdigest(), 16)


@pytest.mark.parametrize("source", ["email", "sms"])
def test_spam_splits_follow_the_hash_rule(source):
    """test iff sha256("tunelab-spam:" + text) % 5 == 0; each file in hash order; no text in both."""
    splits = {split: _raw(DATA / "spam" / f"{source}_{split}.jsonl") for split in ("train", "test")}
    for split, rows in splits.items():
        hashes = [_spam_hash(row["text"]) for row in rows]
        assert all((h % 5 == 0) == (split == "test") for h in hashes), split
        assert hashes == sorted(hashes), f"{source}_{split} is not in hash order"
        assert len({row["text"] for row in rows}) == len(rows), f"{source}_{split} has duplicate texts"
    assert not {r["text"] for r in splits["train"]} & {r["text"] for r in splits["test"]}


def test_sms_train_200_is_the_first_200_sms_training_rows():
    assert _raw(DATA / "spam" / "sms_train_200.jsonl") == _raw(DATA / "spam" / "sms_train.jsonl")[:200]


def test_sms_val_is_the_next_500_training_rows_so_no_test_row_and_no_fine_tuning_row():
    assert _raw(DATA / "spam" / "sms_val.jsonl") == _raw(DATA / "spam" / "sms_train.jsonl")[200:700]


def test_preference_subset_follows_its_rules():
    """HH-RLHF subset: prompts end with the open assistant turn, prompt + longer reply <= 900
    characters, and eval iff sha256(prompt) % 5 == 0 (so no prompt is on both sides)."""
    splits = {split: _raw(DATA / "preference" / f"hh_helpful_{split}.jsonl") for split in ("train", "eval")}
    for split, rows in splits.items():
        assert all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)
        assert all(row["prompt"].endswith("\n\nAssistant:") for row in rows)
        assert all(len(row["prompt"]) + max(len(row["chosen"]), len(row["rejected"])) <= 900 for row in rows)
        buckets = {int(hashlib.sha256(row["prompt"].encode("utf-8")).hexdigest(), 16) % 5 == 0 for row in rows}
        assert buckets == {split == "eval"}, split


def test_instruction_files_have_the_documented_fields_and_parts():
    """Dolly rows keep (instruction, context, response, category); Self-Instruct is 175 human-written
    seed tasks + 252 user-oriented ones, as data/README.md says (told apart by their category)."""
    readme = (DATA / "README.md").read_text()
    for name in ("dolly_subset", "self_instruct_human"):
        rows = _raw(DATA / "instruct" / f"{name}.jsonl")
        assert all(set(row) == {"instruction", "context", "response", "category"} for row in rows), name
    parts = Counter(row["category"].split("/")[0] for row in _raw(DATA / "instruct" / "self_instruct_human.jsonl"))
    seed, user = (int(n) for n in re.search(r"seed tasks \((\d+)\) \+ user-oriented eval set \((\d+)\)", readme).groups())
    assert parts == {"seed": seed, "user_oriented": user}


def _medical_hash(key: str) -> int:
    return int(hashlib.sha256(("tunelab-medical:" + key).encode("utf-8")).hexdigest(), 16)


def test_medical_splits_follow_the_hash_rule_and_never_share_an_answer():
    """test iff sha256("tunelab-medical:" + key) % 5 == 0 (key: PMID or question); hash order; the
    abstracts are exactly the PubMedQA items' PMIDs; no MedQuAD answer is on both sides."""
    for name, key in (("pubmedqa", "pmid"), ("medquad", "question")):
        splits = {split: _raw(DATA / "medical" / f"{name}_{split}.jsonl") for split in ("train", "test")}
        for split, rows in splits.items():
            hashes = [_medical_hash(row[key]) for row in rows]
            assert all((h % 5 == 0) == (split == "test") for h in hashes), (name, split)
            assert hashes == sorted(hashes), f"{name}_{split} is not in hash order"
    pubmed = [r for split in ("train", "test") for r in _raw(DATA / "medical" / f"pubmedqa_{split}.jsonl")]
    abstracts = _raw(DATA / "medical" / "pubmedqa_abstracts.jsonl")
    assert sorted(r["pmid"] for r in abstracts) == sorted(r["pmid"] for r in pubmed)
    by_pmid = {r["pmid"]: r["text"] for r in abstracts}
    assert all(by_pmid[r["pmid"]].startswith(r["context"]) for r in pubmed)
    train, test = (_raw(DATA / "medical" / f"medquad_{split}.jsonl") for split in ("train", "test"))
    assert not {r["answer"] for r in train} & {r["answer"] for r in test}
