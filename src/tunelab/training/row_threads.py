"""`train.row_threads`: a micro-batch's rows trained side by side, one thread each, on a CPU.

On a few CPU cores a small model's matmuls are too small to keep every core busy inside one
operation: smollm2-135m's LoRA step ran 1.57× faster on two threads than on one, not 2×. Here the
micro-batch is split by rows instead, and each part runs its forward and backward in its own
thread with one intra-op thread: the cores work on independent rows, and autograd adds each
part's gradients into ``.grad`` under its own lock, in the order the threads finish. Every part's
loss is its sum over loss tokens divided by the whole step's token count (the Trainer's
``num_items_in_batch``), so the parts add up to the micro-batch's loss and gradients. Two parts
added to an empty gradient give the same bits in either order; with more threads, or on top of an
accumulated micro-batch, the order can change the last bits from one run to the next.

A trained embedding tied to the LM head (full fine-tuning of SmolLM2) adds its gradient rows into
``.grad`` after backward, outside autograd's lock (training/tied_embedding.py): while the parts
run, those rows wait and are added once every part has finished.

Scope, checked before training starts (:func:`check_config`, :func:`check_model`): stages `sft`
and `pretrain` (that token-normalised loss), methods `full`, `freeze`, `head`, `lora`, `ia3`,
`adapter` (not the prompt-learning ones), eager (not `train.compile`), one process, no active
dropout (masks drawn in thread order would not repeat under `train.seed`). The price is memory:
every thread holds its rows' activations at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from concurrent.futures import ThreadPoolExecutor

from ..core.errors import TunelabError
from ..core.lazy import torch

STAGES = ("sft", "pretrain")
METHODS = ("full", "freeze", "head", "lora", "ia3", "adapter")
_M_ARENA_MAX = -8  # glibc mallopt parameter
ARENAS = 1  # measured on smollm2-135m, 2 threads: the same speed with one arena as with two


def check_config(cfg, one_process: bool) -> None:
    """The settings `train.row_threads` > 1 needs, as one `error:` line each."""
    n = cfg.train.row_threads
    if n == 1:
        return
    if not one_process:
        raise TunelabError(f"train.row_threads={n} is for one process on a CPU; with several processes set it to 1")
    if cfg.stage.name not in STAGES:
        raise TunelabError(f"train.row_threads={n} needs stage {' or '.join(STAGES)} (got stage {cfg.stage.name})")
    if cfg.method.name not in METHODS:
        raise TunelabError(f"train.row_threads={n} needs method {', '.join(METHODS)} (got method {cfg.method.name})")
    if cfg.train.compile:
        raise TunelabError(f"train.row_threads={n} does not combine with train.compile=true")
    if cfg.train.batch_size < n:
        raise TunelabError(f"train.row_threads={n} needs train.batch_size >= {n} rows to split "
                           f"(got train.batch_size={cfg.train.batch_size})")


def check_model(model, n: int) -> None:
    """Dropout that would draw masks while training: its order across threads would not repeat."""
    if n == 1:
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            raise TunelabError(f"train.row_threads={n} needs a model without dropout while training "
                               f"({name or 'the model'} drops {module.p:g}; e.g. set method.dropout=0)")
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout"):
        value = getattr(config, key, 0) or 0
        if isinstance(value, (int, float)) and value > 0:
            raise TunelabError(f"train.row_threads={n} needs a model without dropout while training "
                               f"(its config has {key}={value:g})")


def cap_malloc_arenas(cfg) -> None:
    """With `train.row_threads` > 1, cap glibc's malloc arenas, before the model loads (a thread that
    already has an arena keeps it): each new thread otherwise gets its own, and memory freed in one
    is not reused by another (measured: +800 MB peak for two threads on smollm2-135m, +260 MB capped)."""
    if cfg.train.row_threads == 1:
        return
    path = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(path).mallopt(_M_ARENA_MAX, ARENAS)


@contextlib.contextmanager
def rows_side_by_side(trainer, n: int, tied_rows=None):
    """Within the block, ``trainer`` runs each micro-batch's rows in ``n`` threads (nothing for n = 1).
    ``tied_rows``: the tied embedding's `RowAdder`, if the engine switched one on."""
    if n == 1:
        yield
        return
    trainer._row_threads = RowThreads(n, around=tied_rows.held if tied_rows is not None else None)
    try:
        yield
    finally:
        trainer._row_threads.close()
        trainer._row_threads = None


class RowThreads:
    """Runs ``step(part)`` for ``n`` row-slices of a batch in ``n`` threads and sums what they return."""

    def __init__(self, n: int, around=None):
        self.n = n
        self.around = around or contextlib.nullcontext  # a context manager the parts run inside
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tunelab-rows",
                                       initializer=torch.set_num_threads, initargs=(1,))

    def split(self, inputs: dict) -> list[dict]:
        rows = inputs["input_ids"].shape[0]
        bounds = [rows * i // self.n for i in range(self.n + 1)]
        return [{key: value[lo:hi] if torch.is_tensor(value) and value.shape[:1] == (rows,) else value
                 for key, value in inputs.items()} for lo, hi in zip(bounds, bounds[1:])]

    def run(self, step, inputs: dict):
        parts = [part for part in self.split(inputs) if part["input_ids"].shape[0]]
        if len(parts) == 1:  # one row (an epoch's last micro-batch): every core on it, in this thread
            return step(inputs)
        with self.around():
            futures = [self.pool.submit(step, part) for part in parts]
            try:
                losses = [future.result() for future in futures]  # the first failure is raised here
            finally:
                for future in futures:  # every part has stopped before the block is left
                    future.exception()
        return torch.stack(losses).sum()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
