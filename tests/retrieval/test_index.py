"""build_index / open_index on SYNTHETIC documents (tests/synthetic_docs.py) with a real LanceDB directory
under tmp_path and the real minilm-l6 encoder (its semantics are what the rankings test)."""
from __future__ import annotations

import json
import shutil

import pytest
from synthetic_docs import CHUNK_WORDS, OVERLAP, PASSAGES, QUESTIONS, VOLCANO, write_corpus, write_passages

from tunelab.core.errors import TunelabError
from tunelab.retrieval.embed import PROBE_TEXT, Embedder
from tunelab.retrieval.index import Hit, build_index, open_index

pytestmark = pytest.mark.slow  # loads minilm-l6


@pytest.fixture(scope="module")
def minilm():
    return Embedder("minilm-l6")


@pytest.fixture
def encoded(minilm, monkeypatch):
    """Every text the shared embedder is asked to embed during the test (its probe left out)."""
    seen: list[str] = []
    original = minilm.encode

    def encode(texts):
        seen.extend(text for text in texts if text != PROBE_TEXT)
        return original(texts)

    monkeypatch.setattr(minilm, "encode", encode)
    return seen


def build(sources, out, minilm, **settings):
    settings = {"id_field": "id", "chunk_words": CHUNK_WORDS, "overlap": OVERLAP, **settings}
    return build_index([str(s) for s in sources], out, embedder=minilm, **settings)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, minilm):
    """The SYNTHETIC corpus indexed once: (files, index directory). Tests that change it copy it."""
    root = tmp_path_factory.mktemp("corpus")
    files = write_corpus(root / "docs")
    build([files["passages"], files["volcano"]], root / "index", minilm)
    return files, root / "index"


def test_first_build_reports_and_stores_everything(tmp_path, minilm):
    files = write_corpus(tmp_path / "docs")
    stats = build([files["passages"], files["volcano"]], tmp_path / "index", minilm)
    volcano_chunks = stats["added"][1]["chunks"]
    assert volcano_chunks >= 4  # ~150 words in windows of 40 advancing by 30
    assert stats["added"] == [{"source": str(files["passages"].resolve()), "documents": 4, "chunks": 4},
                              {"source": str(files["volcano"].resolve()), "documents": 1, "chunks": volcano_chunks}]
    assert stats["new_chunks"] == stats["chunks"] == 4 + volcano_chunks
    assert (stats["sources"], stats["documents"], stats["replaced"], stats["unchanged"]) == (2, 5, [], [])
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert manifest["embedder"]["spec"] == "minilm-l6" and manifest["embedder"]["dim"] == 384
    assert len(manifest["embedder"]["probe"]) == 384
    assert manifest["chunking"] == {"chunk_words": CHUNK_WORDS, "overlap": OVERLAP}
    assert manifest["table_version"] == stats["table_version"]
    source = manifest["sources"][str(files["passages"].resolve())]
    assert source["rows"] == 4 and source["text_field"] == "text" and len(source["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "index"]  # no build directory left


def test_each_question_finds_its_own_passage_first(corpus, minilm):
    index = open_index(corpus[1])
    assert len(index) == open_index(corpus[1])._table.count_rows()
    for key, question in QUESTIONS.items():
        hits = index.search(question, k=3, embedder=minilm)
        assert [type(hit) for hit in hits] == [Hit] * 3
        assert hits[0].doc == key and hits[0].chunk == 0 and hits[0].text == " ".join(PASSAGES[key].split())
        assert hits[0].source == str(corpus[0]["passages"].resolve())
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        assert 0.3 < hits[0].score <= 1.0  # cosine similarity


def test_a_long_text_file_is_one_document_in_chunks(corpus, minilm):
    index = open_index(corpus[1])
    hits = index.search("How do scientists warn towns before an eruption?", k=1, embedder=minilm)
    assert hits[0].doc == f"{corpus[0]['volcano'].resolve()}:1" and hits[0].chunk >= 3  # the text's last lines
    first = index.search("Where do volcanoes form on tectonic plates?", k=1, embedder=minilm)[0]
    assert (first.doc, first.chunk) == (hits[0].doc, 0)


def test_rows_without_an_id_field_are_named_file_and_row(tmp_path, minilm):
    data = write_passages(tmp_path / "p.jsonl")
    build([data], tmp_path / "index", minilm, id_field=None)
    hit = open_index(tmp_path / "index").search(QUESTIONS["tides"], k=1, embedder=minilm)[0]
    assert hit.doc == f"{data.resolve()}:3"  # tides is the third row


def test_hybrid_fuses_keyword_and_vector_rankings(corpus, minilm):
    index = open_index(corpus[1])
    hits = index.search("seismometer ZX-4471", k=3, mode="hybrid", embedder=minilm)
    assert hits[0].doc.endswith("volcano.txt:1") and "ZX-4471" in hits[0].text
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert hits[0].score <= 2 / 61 + 1e-6  # reciprocal-rank fusion, k=60: at most 1/61 from each ranking
    for key, question in QUESTIONS.items():
        assert index.search(question, k=1, mode="hybrid", embedder=minilm)[0].doc == key
    # a query with only stop words and punctuation: the keyword side finds nothing, vectors still rank
    assert len(index.search('the "of" (a)?', k=2, mode="hybrid", embedder=minilm)) == 2


def test_rerun_embeds_nothing_new_file_only_it_changed_file_replaced(tmp_path, minilm, encoded):
    files = write_corpus(tmp_path / "docs")
    out = tmp_path / "index"
    first = build([files["passages"]], out, minilm)
    assert len(encoded) == first["new_chunks"] == 4

    again = build([files["passages"]], out, minilm)
    assert again["new_chunks"] == 0 and again["added"] == again["replaced"] == []
    assert [row["source"] for row in again["unchanged"]] == [str(files["passages"].resolve())]
    assert len(encoded) == 4 and again["table_version"] == first["table_version"]

    added = build([files["passages"], files["volcano"]], out, minilm)
    assert [row["source"] for row in added["added"]] == [str(files["volcano"].resolve())]
    assert len(encoded) == 4 + added["new_chunks"]
    assert all(text in " ".join(VOLCANO.split()) for text in encoded[4:])  # only the new file's chunks

    changed = dict(PASSAGES, bees="Kites fly when the wind pushes against the sail and a string holds it at an angle.")
    write_passages(files["passages"], changed)
    replaced = build([files["passages"], files["volcano"]], out, minilm)
    assert replaced["replaced"] == [{"source": str(files["passages"].resolve()), "documents": 4, "chunks": 4,
                                     "old_chunks": 4}]
    assert [row["source"] for row in replaced["unchanged"]] == [str(files["volcano"].resolve())]
    index = open_index(out)
    assert index._table.count_rows() == len(index) == replaced["chunks"] == added["chunks"]  # old chunks gone
    texts = {hit.text for hit in index.search("honey bees nectar hive", k=len(index), embedder=minilm)}
    assert not any("nectar" in text for text in texts)
    assert index.search("Why does a kite stay up in the air?", k=1, embedder=minilm)[0].doc == "bees"


def test_changing_the_text_field_reindexes_an_unchanged_file(tmp_path, minilm):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": k, "text": v, "question": QUESTIONS[k]}) + "\n" for k, v in PASSAGES.items()))
    build([data], tmp_path / "index", minilm)
    stats = build([data], tmp_path / "index", minilm, text_field="question")
    assert len(stats["replaced"]) == 1 and stats["chunks"] == 4


def test_the_query_embedder_must_be_the_index_one(corpus, tmp_path):
    index = open_index(corpus[1])
    with pytest.raises(TunelabError, match="embedded with 'minilm-l6' \\(dim 384\\), not 'tiny-bert'"):
        index.search("honey", embedder="tiny-bert")  # refused by name, before the model loads
    with pytest.raises(TunelabError, match="not 'tiny-bert'"):
        index.search("honey", embedder=Embedder("tiny-bert"))
    # the same name with different vectors behind it (e.g. the model was replaced): the probe tells
    copy = tmp_path / "index"
    shutil.copytree(corpus[1], copy)
    manifest = json.loads((copy / "index.json").read_text())
    manifest["embedder"]["probe"] = [-x for x in manifest["embedder"]["probe"]]
    (copy / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(TunelabError, match="'minilm-l6' is not the model index .* was embedded with"):
        open_index(copy).search("honey")  # the index's own spec, loaded by the index


def test_adding_with_other_settings_is_refused(corpus, tmp_path, minilm):
    copy = tmp_path / "index"
    shutil.copytree(corpus[1], copy)
    with pytest.raises(TunelabError, match="built with chunk_words=40, overlap=10; got chunk_words=50"):
        build([corpus[0]["passages"]], copy, minilm, chunk_words=50)
    with pytest.raises(TunelabError, match="embedded with 'minilm-l6'.*not 'tiny-bert'"):
        build([corpus[0]["passages"]], copy, "tiny-bert")


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_must_be_positive(corpus, k):
    with pytest.raises(TunelabError, match="k must be a whole number >= 1"):
        open_index(corpus[1]).search("honey", k=k)


def test_bad_mode_and_empty_query(corpus):
    index = open_index(corpus[1])
    with pytest.raises(TunelabError, match="search mode 'sparse' is not one of: dense, hybrid"):
        index.search("honey", mode="sparse")
    with pytest.raises(TunelabError, match="the query is empty"):
        index.search("  ")


def _corrupt(case: str, path):
    if case == "no-manifest":
        (path / "index.json").unlink()
    elif case == "garbled-manifest":
        (path / "index.json").write_bytes(b"\xff\x00{not json")
    elif case == "foreign-json":
        (path / "index.json").write_text('{"hello": "world"}')
    elif case == "manifest-field-missing":
        manifest = json.loads((path / "index.json").read_text())
        del manifest["embedder"]
        (path / "index.json").write_text(json.dumps(manifest))
    elif case == "table-missing":
        shutil.rmtree(path / "chunks.lance")
    elif case == "version-missing":
        manifest = json.loads((path / "index.json").read_text())
        manifest["table_version"] = 999
        (path / "index.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case, message", [
    ("no-manifest", "is not a tunelab index \\(no index.json\\)"),
    ("garbled-manifest", "is corrupt: index.json is not valid JSON"),
    ("foreign-json", "is corrupt: index.json is not a tunelab index manifest"),
    ("manifest-field-missing", "is corrupt: index.json field 'embedder'"),
    ("table-missing", "is corrupt: its table 'chunks' is missing"),
    ("version-missing", "is corrupt: table version 999 named in its manifest cannot be opened"),
])
def test_corrupt_index_is_refused_by_open_and_by_build(case, message, corpus, tmp_path, minilm):
    copy = tmp_path / "index"
    shutil.copytree(corpus[1], copy)
    _corrupt(case, copy)
    with pytest.raises(TunelabError, match=message):
        open_index(copy)
    if case != "no-manifest":  # without a manifest it is "a directory that is not an index" (below)
        with pytest.raises(TunelabError, match=message):
            build([corpus[0]["passages"]], copy, minilm)


def test_not_an_index(tmp_path):
    with pytest.raises(TunelabError, match="does not exist"):
        open_index(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TunelabError, match="is a file"):
        open_index(tmp_path / "file")
    with pytest.raises(TunelabError, match="is not a tunelab index"):
        open_index(tmp_path)
