"""An interrupted `index` leaves the previous index usable and answering identically: once with an
exception after the table write and before the manifest write, once with a real process
SIGKILLed at that moment. The next build then starts from the manifest's table version (nothing
the interrupted one wrote survives). Documents are SYNTHETIC (tests/synthetic_docs.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from synthetic_docs import CHUNK_WORDS, OVERLAP, PASSAGES, QUESTIONS, write_corpus, write_passages

from tunelab.retrieval import index as index_module
from tunelab.retrieval.embed import Embedder
from tunelab.retrieval.index import build_index, open_index

pytestmark = pytest.mark.slow  # loads minilm-l6

SETTINGS = {"id_field": "id", "chunk_words": CHUNK_WORDS, "overlap": OVERLAP}
PROBES = [*QUESTIONS.values(), "seismometer ZX-4471", "Why does a kite stay up in the air?"]
# The update the interrupted builds attempt: bees rewritten (its old chunk deleted), volcano.txt added.
CHANGED = dict(PASSAGES, bees="Kites fly when the wind pushes against the sail and a string holds it at an angle.")


@pytest.fixture(scope="module")
def minilm():
    return Embedder("minilm-l6")


def answers(path, minilm) -> list:
    index = open_index(path)
    return [(mode, [hit.to_dict() for hit in index.search(q, k=3, mode=mode, embedder=minilm)])
            for q in PROBES for mode in ("dense", "hybrid")]


@pytest.fixture
def indexed(tmp_path, minilm):
    """An index of passages.jsonl alone, its answers and manifest bytes, and the files."""
    files = write_corpus(tmp_path / "docs")
    build_index([str(files["passages"])], tmp_path / "index", embedder=minilm, **SETTINGS)
    before = answers(tmp_path / "index", minilm), (tmp_path / "index" / "index.json").read_bytes()
    write_passages(files["passages"], CHANGED)
    return tmp_path / "index", files, before


def check_survived_and_recovers(out, files, before, minilm) -> None:
    old_answers, old_manifest = before
    assert (out / "index.json").read_bytes() == old_manifest
    index = open_index(out)
    assert index._table.version < index_module._open_table(out).version  # the interrupted build did write
    assert answers(out, minilm) == old_answers
    assert "nectar" in index.search(QUESTIONS["bees"], k=1, embedder=minilm)[0].text  # the old bees passage

    stats = build_index([str(files["passages"]), str(files["volcano"])], out, embedder=minilm, **SETTINGS)
    assert [row["source"] for row in stats["added"]] == [str(files["volcano"].resolve())]
    assert stats["replaced"][0]["old_chunks"] == 4
    index = open_index(out)
    assert index._table.count_rows() == len(index) == stats["chunks"]  # no row of the interrupted build left
    assert index.search("Why does a kite stay up in the air?", k=1, embedder=minilm)[0].doc == "bees"


def test_exception_between_table_write_and_manifest_write(indexed, minilm, monkeypatch):
    out, files, before = indexed

    def crash(path, manifest):
        raise KeyboardInterrupt  # what Ctrl-C at that moment raises

    monkeypatch.setattr(index_module, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index([str(files["passages"]), str(files["volcano"])], out, embedder=minilm, **SETTINGS)
    monkeypatch.undo()
    check_survived_and_recovers(out, files, before, minilm)


KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    from tunelab.retrieval import index

    def die(path, manifest):  # the table holds the new version; the manifest still names the old one
        os.kill(os.getpid(), signal.SIGKILL)

    index.write_manifest = die
    index.build_index(sys.argv[2:], sys.argv[1], id_field="id", chunk_words={words}, overlap={overlap})
""")


def test_process_killed_between_table_write_and_manifest_write(indexed, minilm):
    out, files, before = indexed
    script = KILLED_BUILD.format(words=CHUNK_WORDS, overlap=OVERLAP)
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(files["passages"]), str(files["volcano"])],
                          env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    check_survived_and_recovers(out, files, before, minilm)
