"""An index directory's manifest, ``index.json``: what the LanceDB table next to it holds.

The manifest is the index's commit record. It names the table version it describes and is
replaced atomically (write a temporary file, then ``os.replace``) only after the table write,
so a build that dies midway leaves the previous manifest, and the version it names, in charge.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError

from ..core.errors import TunelabError
from ..core.schema import StrictModel
from .chunk import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP

FORMAT = "tunelab-rag-index"
MANIFEST = "index.json"
TABLE = "chunks"  # the LanceDB table: text, source, chunk, doc, vector


class EmbedderInfo(StrictModel):
    """The model that embedded the chunks; a query must be embedded by the same one."""

    spec: str = Field(description="Model spec as given to Embedder (bundled name, directory or Hub id).")
    dim: int = Field(ge=1, description="Vector width.")
    probe: list[float] = Field(description="The model's vector for embed.PROBE_TEXT: tells a different model apart.")


class ChunkSettings(StrictModel):
    chunk_words: int = Field(DEFAULT_CHUNK_WORDS, ge=1, description="Words per chunk.")
    overlap: int = Field(DEFAULT_OVERLAP, ge=0, description="Words a chunk repeats from the one before it.")


class SourceInfo(StrictModel):
    """One document file as it was indexed; an unchanged sha256 (and fields) means nothing to redo."""

    sha256: str
    text_field: Optional[str] = Field(description="Column read as text; None for a .txt/.md file.")
    id_field: Optional[str] = Field(None, description="Column read as document id; None: '<file>:<row>'.")
    rows: int = Field(ge=0, description="Documents the file contributed.")
    chunks: int = Field(ge=0, description="Chunks those documents became.")


class Manifest(StrictModel):
    format: Literal["tunelab-rag-index"] = FORMAT
    format_version: Literal[1] = 1
    table_version: int = Field(ge=1, description="The LanceDB table version this manifest describes.")
    embedder: EmbedderInfo
    chunking: ChunkSettings
    sources: dict[str, SourceInfo] = Field(default_factory=dict, description="By absolute path.")

    @property
    def documents(self) -> int:
        return sum(source.rows for source in self.sources.values())

    @property
    def chunks(self) -> int:
        return sum(source.chunks for source in self.sources.values())


def read_manifest(path: Path) -> Manifest:
    """The manifest of index directory ``path``; one-line errors for anything that is not a whole index."""
    if not path.exists():
        raise TunelabError(f"index {path} does not exist")
    if not path.is_dir():
        raise TunelabError(f"index {path} is a file, not an index directory")
    file = path / MANIFEST
    if not file.is_file():
        raise TunelabError(f"{path} is not a tunelab index (no {MANIFEST}); build one with `tunelab rag index`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TunelabError(f"index {path} is corrupt: {MANIFEST} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TunelabError(f"index {path} is corrupt: {MANIFEST} is not a tunelab index manifest")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise TunelabError(f"index {path} is corrupt: {MANIFEST} field '{where}': {err['msg']}") from None


def existing_manifest(out: Path) -> Manifest | None:
    """The manifest of the index at ``out`` to extend, or None to build a new one there (``out``
    absent or an empty directory); anything else at ``out`` is refused, never overwritten."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        raise TunelabError(f"index directory {out} is a file")
    if not (out / MANIFEST).exists():
        raise TunelabError(f"output directory {out} already exists and is not a tunelab index (no {MANIFEST}); "
                           "give a new directory or an existing index to add to")
    return read_manifest(out)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace ``path/index.json`` in one step: a reader sees the old manifest or the new one, whole."""
    tmp = path / f".{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(manifest.model_dump_json(indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # the bytes are on disk before the rename makes them the manifest
    os.replace(tmp, path / MANIFEST)
