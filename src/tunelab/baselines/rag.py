"""Retrieval-augmented (RAG) baseline: an instruct model shown the index chunks that best match each query.

The zero-shot settings (``labels``: classify by label-word likelihood; none: answer instruction/chat
rows) plus an index built by `tunelab rag index`. Each query (classification: the message;
generation: the final user message) is searched in the index with the index's own embedder (its
manifest names it, so queries and chunks are embedded by the same model); the ``k`` hits, best
first, are numbered ``[1] ...`` into the query's user message by ``template``. Passages that do not
fit the model (or ``max_context``) are dropped from the end, the weakest first, exactly as ICL drops
demonstrations (``_context.build_prompts``); the report counts them.

With ``gold_field`` (the test-file column holding each row's relevant document id, compared with the
index's document ids: its ``--id-field`` values, else ``<absolute file>:<row>``), the report adds
``recall_at_<k>`` and ``mrr`` (within the k hits) of the very searches the answers were made from.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ..core.errors import TunelabError
from ..stages.base import EvalOptions
from . import zeroshot
from ._context import check_fits, cut
from .zeroshot import ZeroShotAnswerer, ZeroShotClassifier

DEFAULT_TEMPLATE = "Use the passages below to answer.\n\n{passages}\n\n{query}"
_PLACEHOLDER = re.compile(r"\{(passages|query)\}")


class Config(zeroshot.Config):
    """A RAG baseline: the zero-shot settings, plus the index, how many chunks and how they are shown."""

    index: str = Field(description="Index directory built by `tunelab rag index`.")
    k: int = Field(3, ge=1, description="Chunks retrieved per query (fewer are shown when they do not all fit).")
    mode: Literal["dense", "hybrid"] = Field(
        "dense", description="dense: cosine of embeddings; hybrid: that fused with BM25 (reciprocal-rank fusion).")
    gold_field: str | None = Field(
        None, description="Test-file column with each row's relevant document id (or a list of ids): adds "
                          "recall@k and MRR. Ids are the index's --id-field values, else '<absolute file>:<row>'.")
    template: str = Field(
        DEFAULT_TEMPLATE, description="The query's user message: {passages} (numbered [1], [2], ..., best first) "
                                      "and {query} (the message as zero-shot would ask it).")
    passage_tokens: int | None = Field(None, ge=8, description="Tokens kept of each passage (default: max_length).")
    max_context: int | None = Field(
        None, ge=16, description="Prompt + answer tokens allowed (default: the model's positions).")

    @field_validator("template")
    @classmethod
    def _has_placeholders(cls, template: str) -> str:
        missing = [p for p in ("{passages}", "{query}") if p not in template]
        if missing:
            raise ValueError(f"the template must hold {' and '.join(missing)}")
        return template


class Passages:
    """The RAG :class:`~._context.Context`: each query's hits, best first, numbered into its user message."""

    def __init__(self, cfg: Config, index, tokenizer):
        self.cfg, self.index, self.tokenizer = cfg, index, tokenizer
        self.retrieved: list[list] = []  # every query's hits, in order: what the retrieval metrics score
        self.seconds = 0.0
        self._texts: dict[tuple[str, str, int], str] = {}  # a hit's passage, cut once

    def items(self, queries: list[str]) -> list[list]:
        started = time.perf_counter()
        hits = [self.index.search(q, self.cfg.k, self.cfg.mode) if q.strip() else [] for q in queries]
        self.seconds += time.perf_counter() - started
        self.retrieved += hits
        return hits

    def render(self, items: list, chat: list[dict]) -> list[dict]:
        users = [i for i, m in enumerate(chat) if m["role"] == "user"]
        if not items or not users:
            return chat  # no passages: exactly the zero-shot prompt
        last = users[-1]
        passages = "\n\n".join(f"[{n}] {self._text(hit)}" for n, hit in enumerate(items, start=1))
        values = {"passages": passages, "query": chat[last]["content"]}
        content = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.cfg.template)  # one pass: text is never re-read
        return chat[:last] + [{**chat[last], "content": content}] + chat[last + 1:]

    def _text(self, hit) -> str:
        key = (hit.source, hit.doc, hit.chunk)
        if key not in self._texts:
            self._texts[key] = cut(self.tokenizer, hit.text, self.cfg.passage_tokens or self.cfg.max_length)
        return self._texts[key]


# build() opens the index and loads its embedder (so a bad one fails before the model loads);
# evaluate() in the same process reuses them while index.json is the same file (~2 s saved).
_opened: dict[tuple, object] = {}


def open_checked(cfg: Config):
    """The run's index, opened, with its own embedder loaded and checked: index errors come first."""
    from ..retrieval.index import open_index

    path = Path(cfg.index).expanduser()
    try:
        stat = os.stat(path / "index.json")
    except OSError:
        return open_index(path)  # it says what is wrong
    key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if key not in _opened:
        index = open_index(path)
        index.embedder()
        _opened.clear()  # one index at a time: a process rarely uses two
        _opened[key] = index
    return _opened[key]


def _index(loaded):
    if "rag" not in loaded.cache:
        loaded.cache["rag"] = open_checked(loaded.config)
    return loaded.cache["rag"]


def gold_ids(cfg: Config, name: str, file: str, options: EvalOptions | None = None) -> list[list[str]]:
    """Each test row's relevant document ids, from the raw rows (``load_file`` normalises the gold
    column away; both read the same rows in the same order, so row i is example i)."""
    from ..data.io import read_rows
    from ..stages.base import cap

    rows = read_rows(file)
    rows = cap(rows, options) if options is not None else rows
    field = cfg.gold_field
    if not any(field in row for row in rows):
        columns = ", ".join(dict.fromkeys(str(c) for row in rows for c in row))
        raise TunelabError(f"--data {name}={file} has no gold field '{field}' (the RAG run's gold_field); "
                           f"its fields: {columns}")
    gold = []
    for number, row in enumerate(rows, start=1):
        value = row.get(field)
        ids = [str(v).strip() for v in (value if isinstance(value, list) else [value])
               if v is not None and not isinstance(v, (dict, list)) and str(v).strip()]
        if not ids:
            raise TunelabError(f"--data {name}={file} row {number}: gold field '{field}' is missing or empty")
        gold.append(ids)
    return gold


def retrieval_report(cfg: Config, passages: Passages, gold: list[list[str]] | None) -> dict:
    """How the searches went: seconds per query; with gold ids, recall@k and MRR of those same hits."""
    from ..core.metrics import mrr, recall_at_k

    queries = max(len(passages.retrieved), 1)
    out = {"k": cfg.k, "retrieval_mode": cfg.mode, "retrieve_seconds_per_query": passages.seconds / queries,
           "index_table_version": passages.index.manifest.table_version}  # the index may have grown since
    if gold is not None:
        if len(gold) != len(passages.retrieved):  # one search per scored row; anything else is a bug here
            raise RuntimeError(f"{len(passages.retrieved)} searches for {len(gold)} gold rows")
        ranked = [[hit.doc for hit in hits] for hits in passages.retrieved]
        out.update({f"recall_at_{cfg.k}": recall_at_k(ranked, gold, cfg.k), "mrr": mrr(ranked, gold)})
    return out


RAGConfig = Config
task, model_kind, eval_options = zeroshot.task, zeroshot.model_kind, zeroshot.eval_options


def build(cfg: Config):
    """(model, tokenizer): the instruct model as published, once the index and its embedder are known good."""
    open_checked(cfg)
    return zeroshot.build(cfg)


def check(cfg: Config, model, tokenizer) -> dict:
    """Fail early on a context beyond the model; the summary's facts, the index's among them."""
    check_fits(cfg, model)
    index = open_checked(cfg)
    manifest = index.manifest
    facts = {"path": str(index.path.resolve()), "chunks": manifest.chunks, "documents": manifest.documents,
             "embedder": manifest.embedder.spec, "table_version": manifest.table_version}
    return {**zeroshot.check(cfg, model, tokenizer), "index": facts, "k": cfg.k, "mode": cfg.mode}


def check_data(cfg: Config, name: str, file: str) -> None:
    """Before any model loads (`tunelab eval`): a test file without the gold field is refused."""
    if cfg.gold_field:
        gold_ids(cfg, name, file)


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    """Zero-shot's report with the k retrieved passages in each prompt, plus retrieval figures."""
    cfg = loaded.config
    gold = gold_ids(cfg, name, file, options) if cfg.gold_field else None
    passages = Passages(cfg, _index(loaded), loaded.tokenizer)
    scorer = ZeroShotAnswerer if cfg.generative else ZeroShotClassifier
    report = scorer(cfg, loaded.model, loaded.tokenizer, passages, cfg.max_context).evaluate(
        name, file, options, item="passages")
    return {**report, **retrieval_report(cfg, passages, gold)}


def prompt(loaded, messages: list[dict], max_new_tokens: int) -> list[dict]:
    """The chat the model replies to for a conversation: its final user message with the passages found for it."""
    passages = Passages(loaded.config, _index(loaded), loaded.tokenizer)
    answerer = ZeroShotAnswerer(loaded.config, loaded.model, loaded.tokenizer, passages, loaded.config.max_context)
    return answerer.chats([messages], max_new_tokens)[0]
