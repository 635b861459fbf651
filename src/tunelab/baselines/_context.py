"""The step between a query and the chat a baseline's model answers: context put into the chat.

A baseline that adds context (ICL: demonstrations; a retrieval baseline: passages) hands the
shared scorers a :class:`Context`: ``items(queries)`` picks each query's items, most relevant
first; ``render(items, chat)`` puts them into the query's chat. :func:`build_prompts` drops items
from the end (the least relevant) until a prompt fits the model, and counts what it dropped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from ..core.errors import TunelabError
from ..stages._answers import prompt_ids

UNLIMITED = 1 << 30  # a model whose config names no position limit


class Context(Protocol):
    def items(self, queries: list[str]) -> list[list]:
        """Per query text, its context items, most relevant first."""

    def render(self, items: list, chat: list[dict]) -> list[dict]:
        """The query's chat with the items in it."""


@dataclass
class Prompts:
    chats: list[list[dict]]
    ids: list[list[int]]
    kept: list[int]  # context items each chat holds
    dropped: int  # items dropped so that prompts fit


def cut(tokenizer, text: str, max_tokens: int) -> str:
    """The text's first ``max_tokens`` tokens (the text itself, untouched, when it is that short)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def positions(model, max_context: int | None = None) -> int:
    """Prompt + answer tokens allowed: ``max_context`` when set, else the model's position limit."""
    return max_context or getattr(model.config, "max_position_embeddings", None) or UNLIMITED


def check_fits(cfg, model) -> None:
    """A configured ``max_context`` must lie within the model's positions."""
    if cfg.max_context is not None and cfg.max_context > positions(model):
        raise TunelabError(f"max_context={cfg.max_context} is beyond the {positions(model)} positions of model "
                           f"'{cfg.model}'")


def build_prompts(tokenizer, chats: list[list[dict]], queries: list[str], context: Context | None,
                  budget: int) -> Prompts:
    """Each query's chat with its context, as chat and tokens of at most ``budget`` tokens."""
    picked = context.items(queries) if context is not None else [[] for _ in chats]
    out = Prompts([], [], [], 0)
    for chat, items in zip(chats, picked):
        items = list(items)
        while True:
            full = context.render(items, chat) if context is not None else chat
            ids = prompt_ids(tokenizer, full)
            if len(ids) <= budget or not items:
                break
            items.pop()  # the least relevant goes first
            out.dropped += 1
        if len(ids) > budget:
            raise TunelabError(f"a query's prompt is {len(ids)} tokens even without context, beyond the {budget} "
                               "the model allows; lower max_length")
        out.chats.append(full)
        out.ids.append(ids)
        out.kept.append(len(items))
    return out


@dataclass
class PromptStats:
    """What the prompts of one evaluation cost: tokens, context kept and dropped, seconds."""

    queries: int = 0
    tokens: int = 0
    kept: int = 0
    dropped: int = 0
    seconds: float = 0.0
    started: float = field(default=0.0, repr=False)

    def add(self, prompts: Prompts) -> None:
        self.queries += len(prompts.ids)
        self.tokens += sum(map(len, prompts.ids))
        self.kept += sum(prompts.kept)
        self.dropped += prompts.dropped

    def report(self, item: str | None = None) -> dict:
        """Per-query means; ``item`` names the context (e.g. "demos") when there is one."""
        out = {"prompt_tokens_per_query": self.tokens / max(self.queries, 1)}
        if self.seconds:
            out["score_seconds_per_query"] = self.seconds / max(self.queries, 1)
        if item:
            out.update({f"{item}_per_query": self.kept / max(self.queries, 1), f"{item}_dropped": self.dropped})
        return out

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self.started
