"""The batching generation engine under ``tunelab serve``: continuous batching across runs on one base.

Why not transformers' own continuous batching. ``model.generate_batch`` / ``init_continuous_batching``
(``ContinuousBatchingManager``, what ``transformers serve`` builds on) was tried in this venv
(transformers 5.24, torch CPU, peft 0.21) on tiny-llama: it runs on CPU (3 prompts x 8 greedy tokens
gave the same tokens as ``model.generate``, but took 16.6 s for the tiny 2-layer model, most of it
setting up its paged cache), and it runs a peft LoRA model -- but only with the *active* adapter for
every request: ``generate_batch(..., adapter_names=["default", "b", "__base__"])`` gave exactly the
tokens of the call without ``adapter_names``. It packs all requests into one flattened row of tokens
(paged attention over a block table), while peft's per-row ``adapter_names`` needs one batch row per
request, so adapters cannot be switched per request; and it has no hook for tunelab's (IA)³ and
bottleneck routes. So the engine batches itself:

  - one worker thread runs steps; at each step boundary new requests join (prefill, left-padded,
    all new rows of one backend in one forward) and finished or cancelled ones leave;
  - all active rows of one backend (a base and every adapter attached to it) decode in ONE forward
    per step, each row on its own route (``Registry.Backend.forward``: peft ``adapter_names`` for
    LoRA, ``routing.Routing`` hooks for (IA)³ and bottleneck adapters); models of their own run one
    forward per step each;
  - the KV cache is a transformers ``DynamicCache`` whose layers' ``keys``/``values`` (B, H, L, D)
    are merged here: left-padded along L and concatenated along B when rows join, index-selected
    when rows leave, and trimmed of columns that are padding in every row;
  - prefix/prompt-tuning runs (peft feeds them through ``past_key_values``/``inputs_embeds``) are
    generated one request at a time with ``model.generate`` on their own thread.
"""
from __future__ import annotations

import queue
import threading

from ..core.errors import TunelabError
from ..core.lazy import torch
from .decoding import choose
from .registry import GENERATE, Registry
from .request import Chunk, Request, Sampling  # noqa: F401  (Chunk, Sampling: part of the engine's interface)


class _Row:
    def __init__(self, request: Request, entry):
        self.request, self.entry, self.route = request, entry, entry.route
        self.last = None  # the token to feed next step
        self.position = len(request.prompt_ids)  # position of that token


class _Batch:
    """The running rows of one backend and their shared KV cache (B, H, L, D) with mask (B, L)."""

    def __init__(self, backend):
        self.backend = backend
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = None


class Engine:
    """Continuous batching over a registry's models, on one worker thread."""

    def __init__(self, registry: Registry, max_batch_size: int = 16):
        if max_batch_size < 1:
            raise TunelabError(f"max_batch_size must be at least 1 (got {max_batch_size})")
        self.registry, self.max_batch_size = registry, max_batch_size
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._batches: dict[int, _Batch] = {}  # id(backend) -> its running batch
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # forwards run (prefill + decode), for tests and benchmarks

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """The batching thread is alive (``GET /health`` reports it)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        closed = TunelabError("the generation engine was shut down")
        for batch in self._batches.values():
            for row in batch.rows:
                row.request.fail(closed)
        self._batches.clear()
        while not self._waiting.empty():
            self._waiting.get_nowait()[0].fail(closed)

    def __enter__(self) -> "Engine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, model: str, prompt_ids: list[int], sampling: Sampling) -> Request:
        """Queue a generation; it joins the running batch at the next step."""
        entry = self.registry._kind(model, GENERATE)
        served = entry.served
        if not prompt_ids:
            raise TunelabError("the prompt is empty: give at least one token")
        if sampling.max_tokens < 1:
            raise TunelabError(f"max_tokens must be at least 1 (got {sampling.max_tokens})")
        if sampling.temperature < 0:
            raise TunelabError(f"temperature must be >= 0 (got {sampling.temperature})")
        if not 0 < sampling.top_p <= 1:
            raise TunelabError(f"top_p must be in (0, 1] (got {sampling.top_p})")
        total = len(prompt_ids) + sampling.max_tokens
        if total > served.context_length:
            raise TunelabError(f"model '{model}' has a context of {served.context_length} tokens; the prompt "
                               f"({len(prompt_ids)}) plus max_tokens ({sampling.max_tokens}) is {total}")
        tokenizer = self.registry.tokenizer(model)
        vocab = entry.backend.model.get_output_embeddings().weight.shape[0] \
            if hasattr(entry.backend.model, "get_output_embeddings") else None
        if vocab is not None and any(not 0 <= int(t) < vocab for t in prompt_ids):
            raise TunelabError(f"the prompt has token ids outside model '{model}''s vocabulary (0..{vocab - 1})")
        request = Request(model, [int(t) for t in prompt_ids], sampling, tokenizer, _eos_ids(entry.backend))
        if self._thread is None:
            raise TunelabError("the generation engine is not running (call start())")
        self._waiting.put((request, entry))
        self._wake.set()
        return request

    # ------------------------------------------------------------------ worker

    def _active(self) -> int:
        return sum(len(b.rows) for b in self._batches.values())

    def _run(self) -> None:
        while not self._stopping:
            if self._active() == 0 and self._waiting.empty():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self._step()
            except Exception as exc:  # a bug or an out-of-memory: fail what is in flight, keep serving
                for batch in self._batches.values():
                    for row in batch.rows:
                        row.request.fail(exc)
                self._batches.clear()

    def _step(self) -> None:
        with self.registry.lock:
            for batch in list(self._batches.values()):
                self._drop_finished(batch)
                if batch.rows:
                    self._decode(batch)
                    self._drop_finished(batch)
            self._admit()
            for key in [k for k, b in self._batches.items() if not b.rows]:
                del self._batches[key]

    def _admit(self) -> None:
        """Take waiting requests up to max_batch_size, prefill them per backend, merge into the batches."""
        joining: dict[int, list[_Row]] = {}
        while self._active() + sum(map(len, joining.values())) < self.max_batch_size and not self._waiting.empty():
            request, entry = self._waiting.get_nowait()
            if request.cancelled:
                request.drop()
                continue
            if entry.removed:
                request.fail(TunelabError(f"model '{request.model}' was removed from the server"))
                continue
            if not entry.backend.batchable:
                threading.Thread(target=_generate_alone, args=(entry.backend, request), daemon=True).start()
                continue
            joining.setdefault(id(entry.backend), []).append(_Row(request, entry))
        for key, rows in joining.items():
            batch = self._batches.setdefault(key, _Batch(rows[0].entry.backend))
            try:
                self._prefill(batch, rows)
            except Exception as exc:
                for row in rows:
                    row.request.fail(exc)

    @torch.inference_mode()
    def _prefill(self, batch: _Batch, rows: list[_Row]) -> None:
        from transformers import DynamicCache

        backend = batch.backend
        longest = max(len(r.request.prompt_ids) for r in rows)
        pad = backend.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (longest - len(r.request.prompt_ids)) + r.request.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (longest - len(r.request.prompt_ids)) + [1] * len(r.request.prompt_ids)
                             for r in rows])  # (n, T), left-padded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = backend.forward([r.route for r in rows], input_ids=ids, attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=True, logits_to_keep=1)  # transformers 5: `cache`
        self.steps += 1
        logits = out.logits[:, -1, :]
        _merge(batch, cache, mask)  # the forward filled `cache` in place
        batch.rows.extend(rows)
        self._sample(rows, logits)

    @torch.inference_mode()
    def _decode(self, batch: _Batch) -> None:
        rows = batch.rows
        ids = torch.tensor([[r.last] for r in rows])  # (B, 1)
        positions = torch.tensor([[r.position] for r in rows])
        batch.mask = torch.cat([batch.mask, torch.ones(len(rows), 1, dtype=batch.mask.dtype)], dim=1)
        out = batch.backend.forward([r.route for r in rows], input_ids=ids, attention_mask=batch.mask,
                                    position_ids=positions, cache=batch.cache, use_cache=True)
        self.steps += 1
        for r in rows:
            r.position += 1
        self._sample(rows, out.logits[:, -1, :])

    def _sample(self, rows: list[_Row], logits) -> None:
        for row, row_logits in zip(rows, logits):
            s = row.request.sampling
            token = choose(row_logits, s.temperature, s.top_p, row.request.generator)
            row.last = token
            row.request.push(token)

    def _drop_finished(self, batch: _Batch) -> None:
        keep = []
        for index, row in enumerate(batch.rows):
            request = row.request
            if request.done:
                continue
            if request.cancelled:
                request.drop()
            elif row.entry.removed:
                request.fail(TunelabError(f"model '{request.model}' was removed from the server"))
            else:
                keep.append(index)
        if len(keep) == len(batch.rows):
            return
        batch.rows = [batch.rows[i] for i in keep]
        if not keep:
            batch.cache = batch.mask = None
            return
        index = torch.tensor(keep)
        batch.mask = batch.mask[index]
        start = int((batch.mask.sum(0) > 0).nonzero()[0])  # leading columns that are padding in every row
        batch.mask = batch.mask[:, start:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _merge(batch: _Batch, cache, mask) -> None:
    """Add the prefilled rows' cache (n, H, T, D) and mask (n, T) to the batch's, left-padding the shorter."""
    if batch.cache is None:
        batch.cache, batch.mask = cache, mask
        return
    old, new = batch.mask.shape[1], mask.shape[1]
    width = max(old, new)

    def left_pad(t, by: int, dim: int):
        if by == 0:
            return t
        shape = list(t.shape)
        shape[dim] = by
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    batch.mask = torch.cat([left_pad(batch.mask, width - old, 1), left_pad(mask, width - new, 1)], dim=0)
    for mine, theirs in zip(batch.cache.layers, cache.layers):
        mine.keys = torch.cat([left_pad(mine.keys, width - old, 2), left_pad(theirs.keys, width - new, 2)], dim=0)
        mine.values = torch.cat([left_pad(mine.values, width - old, 2), left_pad(theirs.values, width - new, 2)], dim=0)


def _eos_ids(backend) -> set[int]:
    ids = set()
    config = getattr(backend.model, "generation_config", None)
    for source in (getattr(config, "eos_token_id", None), backend.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def _generate_alone(backend, request: Request) -> None:
    """A prefix/prompt-tuning request: ``model.generate`` with the engine's sampling and stopping."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    class Choose(LogitsProcessor):  # the engine's own choice, so seeds and top_p mean the same everywhere
        def __call__(self, input_ids, scores):
            s = request.sampling
            token = choose(scores[0], s.temperature, s.top_p, request.generator)
            forced = torch.full_like(scores, float("-inf"))
            forced[0, token] = 0.0
            return forced

    class Finished(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if request.cancelled:
                request.drop()
            elif not request.done:
                request.push(int(input_ids[0, -1]))
            return torch.tensor([request.done])

    try:
        with backend.lock, torch.inference_mode():
            ids = torch.tensor([request.prompt_ids])
            backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=request.sampling.max_tokens, min_new_tokens=0,
                                   pad_token_id=backend.tokenizer.pad_token_id,
                                   logits_processor=LogitsProcessorList([Choose()]),
                                   stopping_criteria=StoppingCriteriaList([Finished()]))
        if not request.done:  # generate stopped on its own (its EOS test): nothing left to say
            request._end("stop", request._text.finish())
    except Exception as exc:
        request.fail(exc)
