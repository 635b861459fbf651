"""`tunelab rag index` / `query` / `baseline`: build and search a retrieval index (retrieval.index), and
create a RAG baseline run over one (baselines.rag) that `tunelab eval` scores like any run."""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..retrieval.chunk import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP


class Mode(str, Enum):
    dense = "dense"
    hybrid = "hybrid"


rag_app = typer.Typer(no_args_is_help=True, help="Build and query a retrieval (RAG) index of document chunks.")


def _quiet_loading() -> None:
    """No progress bars for loading the embedder's weights or reading a CSV: the commands' own
    lines are the output. Set before transformers/datasets are imported; a user's setting wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows huggingface_hub
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@rag_app.command("index")
def rag_index(
    docs: List[Path] = typer.Argument(..., help="Document files: .txt/.md (one document each) or "
                                               ".jsonl/.json/.csv/.parquet (one per row)."),
    out: Path = typer.Option(..., "--out", help="Index directory: created, or an existing index to add to."),
    field: str = typer.Option("text", "--field", help="Data files: the column holding each document's text."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Data files: the column holding document ids "
                                                                   "(default: FILE:ROW)."),
    model: str = typer.Option("minilm-l6", "--model", help="Embedding model: bundled name, model dir or Hub id."),
    chunk_words: int = typer.Option(DEFAULT_CHUNK_WORDS, "--chunk-words", min=1, help="Words per chunk."),
    overlap: int = typer.Option(DEFAULT_OVERLAP, "--overlap", min=0, help="Words a chunk repeats from the one before."),
):
    """Embed DOCS into the index at --out; files already indexed and unchanged are skipped."""
    _quiet_loading()
    from ..retrieval.index import build_index

    stats = build_index([str(path) for path in docs], out, text_field=field, id_field=id_field, embedder=model,
                        chunk_words=chunk_words, overlap=overlap, log=lambda line: print(line, file=sys.stderr))
    for row in stats["added"]:
        print(f"added      {row['source']}: {_count(row['documents'], 'document')}, {_count(row['chunks'], 'chunk')}")
    for row in stats["replaced"]:
        print(f"replaced   {row['source']}: {_count(row['documents'], 'document')}, {_count(row['chunks'], 'chunk')} "
              f"(was {row['old_chunks']}; the file changed)")
    for row in stats["unchanged"]:
        print(f"unchanged  {row['source']}: skipped")
    print(f"{stats['new_chunks']} new chunks; index {stats['index']} holds {_count(stats['chunks'], 'chunk')} "
          f"from {_count(stats['documents'], 'document')} in {_count(stats['sources'], 'file')}")


@rag_app.command("query")
def rag_query(
    index: Path = typer.Argument(..., help="Index directory (from `tunelab rag index`)."),
    question: str = typer.Argument(..., help="The query text."),
    k: int = typer.Option(5, "--k", min=1, help="How many chunks to return."),
    mode: Mode = typer.Option(Mode.dense, "--mode", help="dense (embeddings) or hybrid (embeddings + BM25, rank-fused)."),
    model: Optional[str] = typer.Option(None, "--model", help="Query embedder (default: the index's own; "
                                                             "any other is refused)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of {text, score, source, chunk, doc}."),
):
    """Print the K chunks of INDEX that best match QUESTION, best first."""
    _quiet_loading()
    from ..retrieval.index import open_index

    hits = open_index(index).search(question, k=k, mode=mode.value, embedder=model)
    if as_json:
        print(json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False))
        return
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. score {hit.score:.4f}  {hit.source}  chunk {hit.chunk}  doc {hit.doc}\n   {hit.text}")


@rag_app.command("baseline")
def rag_baseline(
    model: str = typer.Option(..., "--model", help="Instruct model: bundled name, model dir or Hub id."),
    index: Path = typer.Option(..., "--index", help="Index directory (from `tunelab rag index`); its own embedder "
                                                    "embeds the queries."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    k: int = typer.Option(3, "--k", help="Chunks retrieved per query."),
    mode: Mode = typer.Option(Mode.dense, "--mode", help="dense (embeddings) or hybrid (embeddings + BM25, rank-fused)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels; none: answer instruction/chat data."),
    label_word: Optional[List[str]] = typer.Option(None, "--label-word", help="LABEL=WORD the model answers with (repeatable)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="As for `tunelab zeroshot`."),
    gold_field: Optional[str] = typer.Option(None, "--gold-field", help="Test-file column with each row's relevant "
                                                                       "document id: eval adds recall@k and MRR."),
    template: Optional[str] = typer.Option(None, "--template", help="The user message, with {passages} and {query} "
                                                                   "(default: 'Use the passages below to answer.' ...)."),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Tokens kept of each message."),
    passage_tokens: Optional[int] = typer.Option(None, "--passage-tokens", help="Tokens kept of each passage "
                                                                               "(default: --max-length)."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="Prompt + answer tokens allowed "
                                                                          "(default: the model's positions)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
):
    """Create a RAG baseline run: the K chunks of --index that best match each query, before it."""
    _quiet_loading()
    from ..baselines.rag import RAGConfig
    from .baselines import _common, _create

    settings = {**_common(model, labels, label_word, instruction, max_length), "k": k, "mode": mode.value,
                "index": str(index.expanduser().absolute()),  # the run is evaluated from any directory
                "gold_field": gold_field, "passage_tokens": passage_tokens, "max_context": max_context}
    if template is not None:
        settings["template"] = template
    _create(out, "rag", RAGConfig, settings, overwrite)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"
