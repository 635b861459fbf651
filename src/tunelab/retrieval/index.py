"""A retrieval index: document chunks embedded into an embedded (on-disk) LanceDB table.

An index directory holds LanceDB's table ``chunks`` (text, source, chunk, doc, vector) and
``index.json`` (manifest.py): the embedder with its probe vector, the chunk settings, each
document file's sha256 and what it contributed, and the table version all that describes.

Builds are incremental (an unchanged file is skipped, a changed one has its chunks replaced,
a new one is added) and crash-safe through Lance's table versions: a build starts from the
version the manifest names (restoring it if an interrupted build left later ones), and the
manifest moves to the new version only once the table write is complete. A first build is
made in a hidden sibling directory and renamed into place, so a failed one leaves nothing.

Search is exact (flat) cosine search over unit vectors (``dense``), or that fused with
LanceDB's BM25 full-text search by reciprocal-rank fusion (``hybrid``).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import TunelabError
from .chunk import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP, check_chunking
from .embed import DEFAULT_EMBEDDER, Embedder
from .manifest import TABLE, ChunkSettings, EmbedderInfo, Manifest, existing_manifest, read_manifest, write_manifest
from .plan import FilePlan, check_embedder, plan_sources

MODES = ("dense", "hybrid")
# Each of hybrid's two searches proposes this many chunks before fusion, so a chunk ranked
# moderately by both can beat one ranked first by only one of them.
HYBRID_CANDIDATES = 50
_COLUMNS = ["text", "source", "chunk", "doc"]


@dataclass(frozen=True)
class Hit:
    text: str
    score: float  # dense: cosine similarity; hybrid: reciprocal-rank-fusion score (higher is better)
    source: str  # the document file (absolute path)
    chunk: int  # the chunk's number within its document, from 0
    doc: str  # the document's id: its id_field value, else "<file>:<row>"

    def to_dict(self) -> dict:
        return asdict(self)


class Index:
    """An opened index, pinned to the table version its manifest names."""

    def __init__(self, path: Path, manifest: Manifest, table):
        self.path, self.manifest, self._table = path, manifest, table
        self._embedders: dict[str, Embedder] = {}  # checked against the manifest, by spec

    def __len__(self) -> int:
        return self.manifest.chunks

    def search(self, query: str, k: int = 5, mode: str = "dense", embedder: str | Embedder | None = None) -> list[Hit]:
        """The ``k`` chunks best matching ``query``, best first. ``embedder``: the index's own
        (loaded once) when None; a spec or an Embedder must be the one the index was built with."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TunelabError(f"k must be a whole number >= 1 (got {k!r})")
        if mode not in MODES:
            raise TunelabError(f"search mode '{mode}' is not one of: {', '.join(MODES)}")
        if not isinstance(query, str) or not query.strip():
            raise TunelabError("the query is empty")
        vector = self._embedder(embedder).encode([query])[0]
        if mode == "dense":
            rows = self._table.search(vector).distance_type("cosine").select([*_COLUMNS, "_distance"]).limit(k).to_list()
            return [_hit(row, 1.0 - row["_distance"]) for row in rows]
        from lancedb.rerankers import RRFReranker

        rows = (self._table.search(query_type="hybrid").vector(vector).text(query).distance_type("cosine")
                .rerank(RRFReranker()).limit(max(k, HYBRID_CANDIDATES)).to_list())
        return [_hit(row, row["_relevance_score"]) for row in rows[:k]]

    def embedder(self) -> Embedder:
        """The index's own embedder (the one its manifest names), loaded once and checked by its probe:
        what a caller loads up front so a missing or different model fails before anything else."""
        return self._embedder(None)

    def _embedder(self, embedder: str | Embedder | None) -> Embedder:
        if isinstance(embedder, Embedder):
            if self._embedders.get(embedder.spec) is not embedder:
                check_embedder(self.manifest.embedder, embedder, self.path)
                self._embedders[embedder.spec] = embedder
            return embedder
        spec = self.manifest.embedder.spec if embedder is None else embedder
        if spec not in self._embedders:
            if spec != self.manifest.embedder.spec:  # refused before a model loads
                check_embedder(self.manifest.embedder, None, self.path, spec)
            model = Embedder(spec)
            check_embedder(self.manifest.embedder, model, self.path)
            self._embedders[spec] = model
        return self._embedders[spec]


def _hit(row: dict, score: float) -> Hit:
    return Hit(text=row["text"], score=float(score), source=row["source"], chunk=int(row["chunk"]), doc=row["doc"])


def open_index(path: str | Path) -> Index:
    """The index at ``path`` as its manifest describes it (whatever an interrupted build left after it)."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    return Index(path, manifest, _open_table(path, manifest.table_version))


def _open_table(path: Path, version: int | None = None):
    import lancedb

    db = lancedb.connect(path)
    try:
        table = db.open_table(TABLE)
    except Exception as exc:  # lancedb raises ValueError for a missing table, others for a damaged one
        raise TunelabError(f"index {path} is corrupt: its table '{TABLE}' is missing or unreadable "
                           f"({_first_line(exc)})") from None
    if version is not None:
        try:
            table.checkout(version)
        except Exception as exc:
            raise TunelabError(f"index {path} is corrupt: table version {version} named in its manifest "
                               f"cannot be opened ({_first_line(exc)})") from None
    return table


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def build_index(sources: list[str], out: str | Path, text_field: str = "text", id_field: str | None = None,
                embedder: str | Embedder = DEFAULT_EMBEDDER, chunk_words: int = DEFAULT_CHUNK_WORDS,
                overlap: int = DEFAULT_OVERLAP, log: Callable[[str], None] | None = None) -> dict:
    """Create the index at ``out`` from ``sources``, or add them to the index already there; returns
    what was added, replaced and skipped. Every file is read and checked before anything is
    embedded or written. ``log`` hears what is about to take time (embedding N chunks)."""
    problem = check_chunking(chunk_words, overlap)
    if problem:
        raise TunelabError(problem)
    if not sources:
        raise TunelabError("no document files given")
    out = Path(out).expanduser()
    previous = existing_manifest(out)
    spec = embedder.spec if isinstance(embedder, Embedder) else embedder
    if previous is not None:
        _open_table(out, previous.table_version)  # a damaged index is refused, not extended
        settings = previous.chunking
        if (settings.chunk_words, settings.overlap) != (chunk_words, overlap):
            raise TunelabError(f"index {out} was built with chunk_words={settings.chunk_words}, "
                               f"overlap={settings.overlap}; got chunk_words={chunk_words}, overlap={overlap} "
                               "(use the index's settings, or build a new index)")
        check_embedder(previous.embedder, None, out, spec)
    plans = plan_sources(sources, previous, text_field, id_field, chunk_words, overlap)
    todo = [plan for plan in plans if plan.status != "unchanged"]
    if not todo:
        return _stats(out, plans, previous)
    chunking = ChunkSettings(chunk_words=chunk_words, overlap=overlap)
    if previous is not None:
        data, _ = _embed(todo, embedder, previous, out, log)
        manifest = previous.model_copy(update={"sources": {**previous.sources, **{p.key: p.info for p in todo}}})
        manifest.table_version = _update(out, previous, todo, data)
        write_manifest(out, manifest)  # the commit: until here, readers see the previous version
        return _stats(out, plans, manifest)
    building, created = _start_build(out)  # before the model loads: an unwritable --out fails at once
    try:
        data, info = _embed(todo, embedder, None, out, log)
        manifest = Manifest(table_version=1, embedder=info, chunking=chunking, sources={p.key: p.info for p in todo})
        manifest.table_version = _create(building, data)
        write_manifest(building, manifest)
        os.replace(building, out)  # out is absent or an empty directory
    except BaseException:
        shutil.rmtree(created, ignore_errors=True)
        raise
    return _stats(out, plans, manifest)


def _embed(todo: list[FilePlan], embedder: str | Embedder, previous: Manifest | None, out: Path,
           log: Callable[[str], None] | None):
    """(the new chunks as an Arrow table, the embedder's manifest entry)."""
    model = embedder if isinstance(embedder, Embedder) else Embedder(embedder)
    if previous is not None:
        check_embedder(previous.embedder, model, out)
        info = previous.embedder  # kept as first stored: the probe matched it within tolerance
    else:
        info = EmbedderInfo(spec=model.spec, dim=model.dim, probe=model.probe())
    texts = [chunk.text for plan in todo for chunk in plan.chunks]
    if log:
        log(f"embedding {len(texts):,} chunks from {len(todo)} file{'s' * (len(todo) != 1)} with {model.spec}")
    return _arrow(todo, model.encode(texts), model.dim), info


def _arrow(todo: list[FilePlan], vectors, dim: int):
    import pyarrow as pa

    chunks = [chunk for plan in todo for chunk in plan.chunks]
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table({
        "text": pa.array([chunk.text for chunk in chunks], pa.string()),
        "source": pa.array([plan.key for plan in todo for _ in plan.chunks], pa.string()),
        "chunk": pa.array([chunk.number for chunk in chunks], pa.int32()),
        "doc": pa.array([chunk.doc for chunk in chunks], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),  # (N, dim)
    })


def _start_build(out: Path) -> tuple[Path, Path]:
    """(a hidden directory beside ``out`` to build a new index in, the highest directory this made:
    what to remove if the build fails)."""
    top = None
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise TunelabError(f"cannot create index directory {out}: {folder} is a file")
            break
        top = folder
    building = out.parent / f".{out.name}.building-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        building.mkdir()
    except OSError as exc:
        raise TunelabError(f"cannot create index directory {out}: {out.parent} is not writable "
                           f"({exc.strerror or exc})") from None
    return building, top or building


def _create(building: Path, data) -> int:
    """The table of a new index, with its full-text index; its version."""
    import lancedb

    table = lancedb.connect(building).create_table(TABLE, data)
    _index_text(table)
    return table.version


def _update(out: Path, previous: Manifest, todo: list[FilePlan], data) -> int:
    """Apply the changes to the table from the manifest's version on; the new version's number."""
    table = _open_table(out)
    if table.version != previous.table_version:
        table.restore(previous.table_version)  # drops whatever an interrupted build wrote after it
    for plan in todo:
        if plan.status == "replaced":
            table.delete(f"source = {_sql_string(plan.key)}")
    table.add(data)
    _index_text(table)
    return table.version


def _index_text(table) -> None:
    from lancedb.index import FTS

    # BM25 over English-stemmed words without stop words; rebuilt whole, so it covers every row.
    table.create_index("text", config=FTS(), replace=True)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _stats(out: Path, plans: list[FilePlan], manifest: Manifest | None) -> dict:
    def entry(plan: FilePlan) -> dict:
        row = {"source": plan.key, "documents": plan.info.rows, "chunks": plan.info.chunks}
        if plan.status == "replaced":
            row["old_chunks"] = plan.old_chunks
        return row

    by_status = {status: [entry(plan) for plan in plans if plan.status == status]
                 for status in ("added", "replaced", "unchanged")}
    return {"index": str(out), **by_status,
            "new_chunks": sum(row["chunks"] for row in by_status["added"] + by_status["replaced"]),
            "sources": len(manifest.sources) if manifest else 0,
            "documents": manifest.documents if manifest else 0,
            "chunks": manifest.chunks if manifest else 0,
            "table_version": manifest.table_version if manifest else None}
