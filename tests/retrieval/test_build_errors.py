"""Bad input to build_index: one-line TunelabErrors naming the file, row, field or value, raised
before any model loads or anything is written; and a first build that fails leaves no directory.
Documents are SYNTHETIC."""
from __future__ import annotations

import json

import pytest
from synthetic_docs import PASSAGES, write_passages

from tunelab.core.errors import TunelabError
from tunelab.retrieval import index as index_module
from tunelab.retrieval.embed import Embedder
from tunelab.retrieval.index import build_index


@pytest.fixture(scope="module")
def tiny():
    """The bundled random 2-layer BERT: the late failures below need some embedder, not a good one."""
    return Embedder("tiny-bert")


def rows_file(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def refused(tmp_path, sources, *fragments, **settings):
    """build_index refuses with every fragment in its message and leaves no index behind."""
    out = settings.pop("out", tmp_path / "index")
    with pytest.raises(TunelabError) as caught:
        build_index([str(s) for s in sources], out, **settings)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "index").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a build directory was left behind"
    return message


def test_missing_file(tmp_path):
    refused(tmp_path, [tmp_path / "nope.txt"], "document file not found", "nope.txt")


def test_directory_and_unsupported_type(tmp_path):
    (tmp_path / "docs").mkdir()
    refused(tmp_path, [tmp_path / "docs"], "docs", "is a directory")
    (tmp_path / "page.html").write_text("<p>hi</p>")
    refused(tmp_path, [tmp_path / "page.html"], "page.html", "unsupported type '.html'", ".txt")


def test_a_bad_file_after_a_good_one_still_writes_nothing(tmp_path):
    good = write_passages(tmp_path / "good.jsonl")
    refused(tmp_path, [good, tmp_path / "missing.jsonl"], "missing.jsonl", id_field="id")


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.txt", "", "is empty"), ("blank.txt", " \n\n\t\n", "has no text"),
    ("empty.jsonl", "", "is empty"), ("binary.txt", b"\xff\xfe\x00\x81", "not UTF-8"),
])
def test_empty_or_unreadable_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    refused(tmp_path, [path], name, fragment)


def test_unknown_text_field_lists_the_columns(tmp_path):
    data = write_passages(tmp_path / "p.jsonl")
    refused(tmp_path, [data], "p.jsonl", "no text field 'body'", "its fields: id, text", text_field="body")
    refused(tmp_path, [data], "p.jsonl", "no id field 'key'", "id, text", id_field="key")


@pytest.mark.parametrize("row, fragment", [
    ({"id": "x", "text": "   "}, "row 2: text field 'text' is empty"),
    ({"id": "x", "text": None}, "row 2: text field 'text' is missing"),
    ({"id": "x", "text": ["a", "b"]}, "row 2: text field 'text' is list, expected text"),
    ({"id": "x"}, "row 2: text field 'text' is missing"),
    ({"id": "", "text": "fine"}, "row 2: id field 'id' is missing or empty"),
    ({"id": "bread", "text": "fine"}, "row 2: id 'bread' (field 'id') repeats row 1"),
])
def test_bad_rows_name_the_row_and_field(tmp_path, row, fragment):
    data = rows_file(tmp_path / "rows.jsonl", [{"id": "bread", "text": PASSAGES["bread"]}, row])
    refused(tmp_path, [data], "rows.jsonl", fragment, id_field="id")


def test_ids_repeated_across_files(tmp_path):
    one = write_passages(tmp_path / "one.jsonl")
    two = write_passages(tmp_path / "two.jsonl", {"bread": "Another passage about rye."})
    refused(tmp_path, [one, two], "document id 'bread'", "one.jsonl", "two.jsonl", id_field="id")


@pytest.mark.parametrize("settings, fragment", [
    ({"chunk_words": 0}, "chunk_words must be a whole number >= 1 (got 0)"),
    ({"overlap": -1}, "overlap must be a whole number >= 0 (got -1)"),
    ({"chunk_words": 20, "overlap": 20}, "overlap (20) must be smaller than chunk_words (20)"),
])
def test_bad_chunk_settings(tmp_path, settings, fragment):
    refused(tmp_path, [write_passages(tmp_path / "p.jsonl")], fragment, **settings)


def test_no_sources(tmp_path):
    refused(tmp_path, [], "no document files given")


def test_out_that_is_not_an_index_is_never_touched(tmp_path):
    data = write_passages(tmp_path / "p.jsonl")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    refused(tmp_path, [data], "output directory", "mine", "is not a tunelab index", out=mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    refused(tmp_path, [data], "index directory", "notes.txt", "is a file", out=mine / "notes.txt")


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    data = write_passages(tmp_path / "p.jsonl")
    refused(tmp_path, [data], "cannot create index directory", "blocker is a file", out=blocker / "sub" / "index",
            embedder="no-such-model")  # refused before the model would load
    refused(tmp_path, [data], "cannot create index directory", "not writable", out="/proc/tunelab-test/index",
            embedder="no-such-model")


def test_a_first_build_that_fails_late_leaves_no_directory(tmp_path, monkeypatch, tiny):
    """An error after the table is written (here: writing the manifest) removes the half-built index,
    and the parent directories the build made for it."""
    def fail(path, manifest):
        raise RuntimeError("injected: disk full")

    monkeypatch.setattr(index_module, "write_manifest", fail)
    data = write_passages(tmp_path / "p.jsonl")
    with pytest.raises(RuntimeError, match="injected"):
        build_index([str(data)], tmp_path / "index", embedder=tiny)
    with pytest.raises(RuntimeError, match="injected"):
        build_index([str(data)], tmp_path / "new" / "parents" / "index", embedder=tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_an_unknown_model_fails_before_anything_is_written(tmp_path):
    refused(tmp_path, [write_passages(tmp_path / "p.jsonl")], "no-such-model", embedder="no-such-model")


def test_a_failed_first_build_into_an_empty_directory_leaves_it_empty(tmp_path, monkeypatch, tiny):
    out = tmp_path / "index"
    out.mkdir()
    monkeypatch.setattr(index_module, "write_manifest", lambda path, manifest: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_index([str(write_passages(tmp_path / "p.jsonl"))], out, embedder=tiny)
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["index", "p.jsonl"]
    monkeypatch.undo()
    stats = build_index([str(tmp_path / "p.jsonl")], out, embedder=tiny)  # an empty directory is fine
    assert stats["chunks"] == 4 and (out / "index.json").is_file()
