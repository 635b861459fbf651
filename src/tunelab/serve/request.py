"""One generation request and what it produces: its sampling settings, its chunks, and the bridge from
the engine's worker thread (which pushes tokens) to callers that stream (asyncio) or wait (blocking)."""
from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..core.lazy import torch
from .decoding import TextStream


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # keep going past EOS until max_tokens/stop (benchmarks: fixed-length replies)


@dataclass
class Chunk:
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | None (more to come); "cancelled" after cancel()


class Request:
    """One generation in flight: the worker thread produces chunks, callers stream or wait."""

    def __init__(self, model: str, prompt_ids: list[int], sampling: Sampling, tokenizer, eos: set[int]):
        self.model, self.prompt_ids, self.sampling = model, list(prompt_ids), sampling
        self.prompt_tokens = len(self.prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._text = TextStream(tokenizer, sampling.stop)
        self._eos = eos
        self._chunks: list[Chunk] = []
        self._unsent: list[int] = []  # tokens whose text is still held back
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancelled = False
        seed = sampling.seed if sampling.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator().manual_seed(seed)  # per request: batch mates never change its draws

    # ------------------------------------------------------------------ caller side

    def cancel(self) -> None:
        """The client went away: the worker frees this request's batch slot at its next step."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def token_ids(self) -> list[int]:
        """The tokens generated so far (EOS included when it ended the reply)."""
        return [t for c in self._chunks for t in c.token_ids] + self._unsent

    def result(self, timeout: float | None = None) -> tuple[str, str, int]:
        """Block until finished: (text, finish_reason, completion_tokens)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"generation for model '{self.model}' did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return "".join(c.text for c in self._chunks), self.finish_reason, self.completion_tokens

    async def stream(self) -> AsyncIterator[Chunk]:
        """The chunks as they are produced (those already produced first), in an asyncio event loop."""
        inbox: asyncio.Queue = asyncio.Queue()
        with self._lock:
            backlog = list(self._chunks)
            finished = self._done.is_set()
            if not finished:
                self._listeners.append((asyncio.get_running_loop(), inbox))
        for chunk in backlog:
            yield chunk
        if finished:
            if self.error is not None:
                raise self.error
            return
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item

    # ------------------------------------------------------------------ worker side

    def _publish(self, item) -> None:
        """Record a chunk (or the end: None, or an error) and wake every listener's event loop."""
        with self._lock:
            if isinstance(item, Chunk):
                self._chunks.append(item)
            listeners = list(self._listeners)
            if item is None or isinstance(item, BaseException):
                self._listeners.clear()
                self._done.set()
        for loop, inbox in listeners:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:  # that loop is closed: its client is gone
                pass

    def push(self, token: int) -> bool:
        """One generated token; True when the request is finished."""
        self.completion_tokens += 1
        self._unsent.append(token)
        if token in self._eos and not self.sampling.ignore_eos:
            return self._end("stop", self._text.finish())
        text, stopped = self._text.push(token)
        if stopped:
            return self._end("stop", text)
        if self.completion_tokens >= self.sampling.max_tokens:
            return self._end("length", text + self._text.finish())
        if text:
            self._publish(Chunk(text, self._unsent, None))
            self._unsent = []
        return False

    def _end(self, reason: str, text: str) -> bool:
        self.finish_reason = reason
        self._publish(Chunk(text, self._unsent, reason))
        self._unsent = []
        self._publish(None)
        return True

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self.error = error
            self._publish(error)

    def drop(self) -> None:
        """Cancelled: end the stream without more text."""
        if not self._done.is_set():
            self._end("cancelled", "")
