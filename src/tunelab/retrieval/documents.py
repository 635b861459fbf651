"""Documents to index: a text file is one document; a data file gives one document per row.

``.txt``/``.md``: the whole file is one document (chunking cuts it to size; splitting at blank
lines would cut a section from its heading). ``.jsonl``/``.json``/``.csv``/``.parquet``: each
row's ``text_field`` is a document. A document's id is the row's ``id_field`` value when one is
given, else ``"<file>:<row>"`` (row numbers from 1; a text file is row 1).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import TunelabError
from ..data.io import read_rows

TEXT_SUFFIXES = (".txt", ".md")
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")  # what read_rows reads


@dataclass(frozen=True)
class Document:
    doc: str  # the document's id
    text: str


def source_key(path: str | Path) -> str:
    """How an index names a document file: its absolute path, so a later run from another
    directory recognises the same file."""
    return str(Path(path).expanduser().resolve())


def check_source(path: Path) -> None:
    if not path.exists():
        raise TunelabError(f"document file not found: {path}")
    if path.is_dir():
        raise TunelabError(f"document path {path} is a directory; give the files in it (e.g. {path}/*.txt)")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES and suffix not in DATA_SUFFIXES:
        raise TunelabError(f"document file {path}: unsupported type '{path.suffix}'; "
                           "use .txt, .md, .jsonl, .json, .csv or .parquet")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_documents(path: Path, text_field: str = "text", id_field: str | None = None) -> list[Document]:
    """Every document in ``path`` (a checked source); errors name the file, row and field."""
    key = source_key(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TunelabError(f"document file {path} is not UTF-8 text") from None
        if not text.strip():
            raise TunelabError(f"document file {path} is empty" if not text else f"document file {path} has no text")
        return [Document(f"{key}:1", text)]
    rows = read_rows(str(path))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    for flag, field in (("text field", text_field), ("id field", id_field)):
        if field is not None and field not in columns:
            raise TunelabError(f"document file {path} has no {flag} '{field}'; its fields: {', '.join(map(str, columns))}")
    documents, seen = [], {}
    for number, row in enumerate(rows, start=1):
        text = _text(row.get(text_field), path, number, text_field)
        doc = f"{key}:{number}"
        if id_field is not None:
            value = row.get(id_field)
            if value is None or isinstance(value, (dict, list)) or not str(value).strip():
                raise TunelabError(f"document file {path} row {number}: id field '{id_field}' is missing or empty")
            doc = str(value)
            if doc in seen:
                raise TunelabError(f"document file {path} row {number}: id '{doc}' (field '{id_field}') "
                                   f"repeats row {seen[doc]}; ids must be unique")
            seen[doc] = number
        documents.append(Document(doc, text))
    return documents


def _text(value, path: Path, number: int, field: str) -> str:
    if value is None:
        raise TunelabError(f"document file {path} row {number}: text field '{field}' is missing")
    if not isinstance(value, str):
        raise TunelabError(f"document file {path} row {number}: text field '{field}' is {type(value).__name__}, "
                           "expected text")
    if not value.strip():
        raise TunelabError(f"document file {path} row {number}: text field '{field}' is empty")
    return value
