"""In-context learning baseline: an instruct model shown k solved training examples before each query.

Classification (``labels`` given): each demonstration is a prior user/assistant exchange, the
zero-shot question about a training message answered with its label word; then the query, scored
by label-word likelihood exactly as zero-shot does. Generation (no labels): demonstrations are
prior instruction -> response turns, then the query's prompt, evaluated with the answer metrics.

``select: random`` draws k demonstrations per query, seeded by ``seed`` and the query text (a query
gets the same ones in any file, in any order); ``nearest`` takes the k training examples most
similar to the query (cosine of ``embedder`` sentence embeddings), most similar first. The chat
holds them in that order, then the query. No query is its own demonstration: a training example
whose text (classification: the message; generation: the final user message) equals the query's
is excluded. The match is exact, so a near-duplicate (other spacing or case) can still appear.
Demonstrations that do not fit the model's positions (or ``max_context``) are dropped from the
end, the least similar first, and the report counts them.

The pool's embeddings are computed once per load and cached in the run directory
(``demo_embeddings.npz``, keyed by the pool's content and the embedder's probe vector), so a later
``tunelab eval`` of the same run does not embed the pool again.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from ..core.errors import TunelabError
from ..core.lazy import np
from ..retrieval.embed import DEFAULT_EMBEDDER
from ..stages.base import EvalOptions
from . import zeroshot
from ._context import check_fits, cut
from .zeroshot import ZeroShotAnswerer, ZeroShotClassifier, query_text

CACHE_FILE = "demo_embeddings.npz"


class Config(zeroshot.Config):
    """An ICL baseline: the zero-shot settings, plus where demonstrations come from and how many."""

    train: str = Field(description="File the demonstrations come from: labelled rows to classify, else "
                                   "instruction/chat rows.")
    k: int = Field(4, ge=1, description="Demonstrations per query (fewer when they do not all fit the model).")
    select: Literal["random", "nearest"] = Field(
        "nearest", description="random: k drawn per query (seeded); nearest: the k most similar by embedding.")
    seed: int = Field(0, description="Seed of the random draws.")
    embedder: str = Field(DEFAULT_EMBEDDER, description="Sentence embedder for select=nearest.")
    max_context: int | None = Field(
        None, ge=16, description="Prompt + answer tokens allowed (default: the model's positions).")
    format: str = Field("auto", description="Format of the train file (auto: detected; with labels: classification).")
    fields: dict[str, str] = Field(default_factory=dict, description="Train file columns, CANONICAL=COLUMN.")


@dataclass(frozen=True)
class Demo:
    query: str  # classification: the message; generation: the final user message
    answer: str  # classification: the label; generation: the reference reply


def read_pool(cfg: Config) -> tuple[list[Demo], str]:
    """The demonstration pool of ``cfg.train``, checked, and a digest of its content."""
    from ..data import load_file
    from ..stages._answers import CHAT_FORMATS, split_answer

    wanted = "classification" if cfg.format == "auto" and not cfg.generative else cfg.format
    fmt, rows = load_file(cfg.train, wanted, cfg.fields)
    if cfg.generative:
        if fmt not in CHAT_FORMATS:
            raise TunelabError(f"train {cfg.train} is in format '{fmt}'; a generation ICL baseline draws "
                               f"demonstrations from {', '.join(CHAT_FORMATS)} data (give labels to classify)")
        pool = [Demo(query_text(prompt), answer) for prompt, answer in (split_answer(r["messages"]) for r in rows)]
    else:
        if fmt != "classification":
            raise TunelabError(f"train {cfg.train} is in format '{fmt}'; classifying needs labelled rows "
                               "(text, label; map columns with fields)")
        seen = {row["label"] for row in rows}
        unknown, absent = sorted(seen - set(cfg.labels)), [label for label in cfg.labels if label not in seen]
        if unknown:
            raise TunelabError(f"train {cfg.train} has labels {unknown} that are not among the labels {cfg.labels}")
        if absent:
            raise TunelabError(f"train {cfg.train} has no example of label(s) {absent}: every label needs "
                               "demonstrations")
        pool = [Demo(row["text"], row["label"]) for row in rows]
    if len(pool) < cfg.k:
        raise TunelabError(f"k={cfg.k}, but train {cfg.train} holds only {len(pool)} examples")
    digest = hashlib.sha256(json.dumps([[d.query, d.answer] for d in pool]).encode()).hexdigest()
    return pool, digest


class Demonstrations:
    """The ICL :class:`~._context.Context`: each query's demonstrations (pool indices), as prior turns."""

    def __init__(self, cfg: Config, pool: list[Demo], turns: Callable[[Demo], list[dict]], embedder=None,
                 vectors=None):
        self.cfg, self.pool, self.turns = cfg, pool, turns
        self.embedder, self.vectors = embedder, vectors  # select=nearest: the pool's (N, dim) unit vectors
        self.by_text: dict[str, set[int]] = {}
        for i, demo in enumerate(pool):
            self.by_text.setdefault(demo.query, set()).add(i)
        self._rendered: dict[int, list[dict]] = {}

    def select(self, queries: list[str]) -> list[list[int]]:
        """Per query, its demonstrations' pool indices in chat order (nearest: most similar first)."""
        banned = [self.by_text.get(q, set()) for q in queries]  # the query itself, if it is in the pool
        if self.cfg.select == "nearest":
            from ..retrieval.embed import nearest

            return nearest(self.embedder.encode(queries), self.vectors, self.cfg.k, banned)
        return [self._draw(q, b) for q, b in zip(queries, banned)]

    def _draw(self, query: str, banned: set[int]) -> list[int]:
        rng = random.Random(f"{self.cfg.seed}:{query}")  # a str seed goes through SHA-512: the same in every process
        picks = rng.sample(range(len(self.pool)), min(len(self.pool), self.cfg.k + len(banned)))
        return [i for i in picks if i not in banned][: self.cfg.k]

    items = select

    def render(self, items: list[int], chat: list[dict]) -> list[dict]:
        head = chat[:1] if chat and chat[0]["role"] == "system" else []  # a system message stays first
        for i in items:
            if i not in self._rendered:
                self._rendered[i] = self.turns(self.pool[i])
        return head + [turn for i in items for turn in self._rendered[i]] + chat[len(head):]


def _pool_state(loaded) -> dict:
    """The pool (the one the run was made with) and, for nearest, its embeddings: built once per load."""
    if "icl" not in loaded.cache:
        cfg = loaded.config
        pool, digest = read_pool(cfg)
        made_with = loaded.info.summary.get("pool_sha256") if loaded.info is not None else None
        if made_with and made_with != digest:
            raise TunelabError(f"train {cfg.train} has changed since this ICL run was made; make the run again "
                               "(`tunelab icl ... --overwrite`)")
        state = {"pool": pool, "embedder": None, "vectors": None, "embed_seconds": 0.0}
        if cfg.select == "nearest":
            state.update(pool_embeddings(cfg, pool, digest, loaded.run_dir))
        loaded.cache["icl"] = state
    return loaded.cache["icl"]


def pool_embeddings(cfg: Config, pool: list[Demo], digest: str, run_dir: Path | None) -> dict:
    """The embedder and the pool's vectors, read from the run directory's cache when it matches."""
    from ..retrieval.embed import Embedder

    embedder = Embedder(cfg.embedder)
    key = hashlib.sha256(json.dumps([digest, cfg.embedder, embedder.max_length, embedder.probe()]).encode()).hexdigest()
    path = Path(run_dir) / CACHE_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as cached:
                if str(cached["key"]) == key:
                    return {"embedder": embedder, "vectors": cached["vectors"], "embed_seconds": 0.0}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed
    started = time.perf_counter()
    vectors = embedder.encode([demo.query for demo in pool])
    seconds = time.perf_counter() - started
    if path is not None:
        try:
            tmp = path.with_name(f".{CACHE_FILE}")
            with tmp.open("wb") as handle:
                np.savez(handle, key=np.array(key), vectors=vectors)
            os.replace(tmp, path)
        except OSError:
            pass  # a run directory we cannot write to: no cache, the same numbers
    return {"embedder": embedder, "vectors": vectors, "embed_seconds": seconds}


def _context(loaded, turns: Callable[[Demo], list[dict]]) -> Demonstrations:
    state = _pool_state(loaded)
    return Demonstrations(loaded.config, state["pool"], turns, state["embedder"], state["vectors"])


def _answerer(loaded) -> ZeroShotAnswerer:
    cfg, tokenizer = loaded.config, loaded.tokenizer
    answerer = ZeroShotAnswerer(cfg, loaded.model, tokenizer, max_context=cfg.max_context)
    answerer.context = _context(loaded, lambda demo: [
        {"role": "user", "content": cut(tokenizer, demo.query, cfg.max_length)},
        {"role": "assistant", "content": cut(tokenizer, demo.answer, cfg.max_length)}])
    return answerer


ICLConfig = Config
task, model_kind, eval_options = zeroshot.task, zeroshot.model_kind, zeroshot.eval_options


def build(cfg: Config):
    """(model, tokenizer): the instruct model as published, once the train file is known to be usable."""
    read_pool(cfg)
    return zeroshot.build(cfg)


def check(cfg: Config, model, tokenizer) -> dict:
    """Fail early on an embedder that does not load or a context beyond the model; the summary's facts."""
    pool, digest = read_pool(cfg)
    check_fits(cfg, model)
    if cfg.select == "nearest":
        from ..retrieval.embed import Embedder

        Embedder(cfg.embedder)
    return {**zeroshot.check(cfg, model, tokenizer), "demo_pool": len(pool), "pool_sha256": digest}


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    """Zero-shot's report with k demonstrations before each query, plus the pool size and embedding time."""
    cfg = loaded.config
    if cfg.generative:
        report = _answerer(loaded).evaluate(name, file, options, item="demos")
    else:
        classifier = ZeroShotClassifier(cfg, loaded.model, loaded.tokenizer, max_context=cfg.max_context)
        classifier.context = _context(loaded, lambda demo: [classifier.user_turn(demo.query),
                                                            classifier.answer_turn(demo.answer)])
        report = classifier.evaluate(name, file, options, item="demos")
    state = _pool_state(loaded)
    return {**report, "demo_pool": len(state["pool"]), "pool_embed_seconds": state["embed_seconds"]}


def prompt(loaded, messages: list[dict], max_new_tokens: int) -> list[dict]:
    """The chat the model replies to for a conversation: demonstrations, then the conversation."""
    return _answerer(loaded).chats([messages], max_new_tokens)[0]
