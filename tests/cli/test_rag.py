"""`tunelab rag index` / `tunelab rag query` end to end through the real CLI (subprocesses) on
SYNTHETIC documents, with minilm-l6."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # loads minilm-l6

# SYNTHETIC passages, one per topic.
PASSAGES = {
    "bees": "Honey bees collect nectar from flowers and turn it into honey inside the hive.",
    "tides": "Ocean tides are caused mostly by the gravity of the Moon, so the sea rises and falls twice a day.",
    "chess": "Chess is a board game for two players; the game is won by checkmating the opposing king.",
}
NOTE = "A kite flies when the wind pushes against its sail while a string holds it at an angle to the wind."


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The index built once through the CLI: (docs directory, index directory, rc, stdout, stderr)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("rag")
    (root / "passages.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in PASSAGES.items()))
    (root / "kite.txt").write_text(NOTE + "\n")
    result = run_cli("rag", "index", root / "passages.jsonl", root / "kite.txt", "--out", root / "idx",
                     "--id-field", "id", "--chunk-words", "40", "--overlap", "10")
    return root, root / "idx", *result


def test_index_prints_what_it_added_then_skips_unchanged_files(built, cli):
    root, index, rc, out, err = built
    assert rc == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert lines[0] == f"added      {(root / 'passages.jsonl').resolve()}: 3 documents, 3 chunks"
    assert lines[1] == f"added      {(root / 'kite.txt').resolve()}: 1 document, 1 chunk"
    assert lines[-1] == f"4 new chunks; index {index} holds 4 chunks from 4 documents in 2 files"
    assert "Loading weights" not in err and "%|" not in err  # no progress bars
    assert "embedding 4 chunks from 2 files with minilm-l6" in err

    rc, out, err = cli("rag", "index", root / "passages.jsonl", root / "kite.txt", "--out", index, "--id-field", "id",
                       "--chunk-words", "40", "--overlap", "10")
    assert rc == 0, err[-3000:]
    assert out.strip().splitlines() == [f"unchanged  {(root / 'passages.jsonl').resolve()}: skipped",
                                        f"unchanged  {(root / 'kite.txt').resolve()}: skipped",
                                        f"0 new chunks; index {index} holds 4 chunks from 4 documents in 2 files"]


def test_query_json_is_one_list_of_hits(built, cli):
    root, index, *_ = built
    rc, out, err = cli("rag", "query", index, "Where does honey come from?", "--k", "3", "--json")
    assert rc == 0, err[-3000:]
    hits = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(hits, list) and len(hits) == 3
    for hit in hits:
        assert set(hit) == {"text", "score", "source", "chunk", "doc"}
        assert isinstance(hit["text"], str) and isinstance(hit["score"], float) and isinstance(hit["chunk"], int)
    assert hits[0]["doc"] == "bees" and hits[0]["text"] == PASSAGES["bees"] and hits[0]["chunk"] == 0
    assert hits[0]["source"] == str((root / "passages.jsonl").resolve())
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "Loading weights" not in err and "%|" not in err


def test_query_text_output_hybrid(built, cli):
    root, index, *_ = built
    rc, out, err = cli("rag", "query", index, "kite wind string", "--k", "2", "--mode", "hybrid")
    assert rc == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[0].startswith("1. score 0.0") and f"{(root / 'kite.txt').resolve()}  chunk 0  doc " in lines[0]
    assert lines[1] == f"   {NOTE}" and lines[2].startswith("2. score ")


def test_the_rag_commands_keep_importing_the_cli_cheap():
    import subprocess
    import sys

    code = ("import sys, tunelab.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'lancedb', 'pyarrow', 'numpy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
