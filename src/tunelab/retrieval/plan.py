"""What a build has to do, worked out before anything is embedded or written: per document file,
added / replaced / unchanged and its chunks; and whether an embedder is the index's own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import TunelabError
from .chunk import chunk_text
from .documents import TEXT_SUFFIXES, check_source, file_sha256, read_documents, source_key
from .embed import Embedder, same_embedder
from .manifest import EmbedderInfo, Manifest, SourceInfo


@dataclass(frozen=True)
class Chunk:
    doc: str
    number: int  # within its document, from 0
    text: str


@dataclass
class FilePlan:
    key: str  # the file's absolute path
    status: str  # "added", "replaced" or "unchanged"
    info: SourceInfo
    chunks: list[Chunk] = field(default_factory=list)  # empty when unchanged
    old_chunks: int = 0  # replaced: how many chunks it had


def plan_sources(sources: list[str], previous: Manifest | None, text_field: str, id_field: str | None,
                 chunk_words: int, overlap: int) -> list[FilePlan]:
    """One plan per distinct file (a file given twice counts once); reads and checks every file."""
    plans: dict[str, FilePlan] = {}
    for source in sources:
        path = Path(source).expanduser()
        check_source(path)
        key = source_key(path)
        if key in plans:
            continue
        is_text = path.suffix.lower() in TEXT_SUFFIXES
        wanted = SourceInfo(sha256=file_sha256(path), text_field=None if is_text else text_field,
                            id_field=None if is_text else id_field, rows=0, chunks=0)
        before = previous.sources.get(key) if previous else None
        if before is not None and _same_input(before, wanted):
            plans[key] = FilePlan(key, "unchanged", before)
            continue
        chunks = []
        documents = read_documents(path, text_field, id_field)
        for document in documents:
            chunks += [Chunk(document.doc, number, text)
                       for number, text in enumerate(chunk_text(document.text, chunk_words, overlap))]
        info = wanted.model_copy(update={"rows": len(documents), "chunks": len(chunks)})
        plans[key] = FilePlan(key, "added" if before is None else "replaced", info, chunks,
                              before.chunks if before else 0)
    _check_unique_ids(list(plans.values()), id_field)
    return list(plans.values())


def _same_input(before: SourceInfo, now: SourceInfo) -> bool:
    return (before.sha256, before.text_field, before.id_field) == (now.sha256, now.text_field, now.id_field)


def _check_unique_ids(plans: list[FilePlan], id_field: str | None) -> None:
    """Ids from ``id_field`` must not repeat across the files of one build (within a file,
    documents.py checks); "<file>:<row>" ids cannot repeat."""
    if id_field is None:
        return
    first: dict[str, str] = {}
    for plan in plans:
        for doc in dict.fromkeys(chunk.doc for chunk in plan.chunks):
            if first.setdefault(doc, plan.key) != plan.key:
                raise TunelabError(f"document id '{doc}' (field '{id_field}') is in both {first[doc]} and {plan.key}; "
                                   "ids must be unique")


def check_embedder(stored: EmbedderInfo, embedder: Embedder | None, where: Path, spec: str | None = None) -> None:
    """Refuse an embedder other than the one ``stored`` describes: by its spec (``spec`` alone,
    before any model loads), then by its probe vector (a different model behind the same name)."""
    spec = embedder.spec if embedder is not None else spec
    if spec != stored.spec:
        raise TunelabError(f"index {where} was embedded with '{stored.spec}' (dim {stored.dim}), not '{spec}': "
                           f"query it with '{stored.spec}', or build a new index for '{spec}'")
    if embedder is None:
        return
    if embedder.dim != stored.dim or not same_embedder(stored.probe, embedder):
        raise TunelabError(f"embedder '{spec}' is not the model index {where} was embedded with (dim {embedder.dim} "
                           f"vs {stored.dim}, or different vectors for the same text); rebuild the index")
