"""What tunelab tells the person at the terminal, at the level a command sets for its duration.

``quiet``: nothing (a command's result, e.g. the run directory, still goes to stdout); ``normal``:
tunelab's own short notes and progress; ``verbose``: also the libraries' own output (per-step
log records, progress bars). Notes go to stderr: stdout's last line is a command's result.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
_level: contextvars.ContextVar[str] = contextvars.ContextVar("tunelab_console_level", default=NORMAL)


def level() -> str:
    return _level.get()


def level_from(quiet: bool, verbose: bool) -> str:
    if quiet and verbose:
        from .errors import TunelabError

        raise TunelabError("quiet and verbose exclude each other (--quiet prints only the result); choose one")
    return QUIET if quiet else VERBOSE if verbose else NORMAL


@contextlib.contextmanager
def at_level(value: str):
    token = _level.set(value)
    try:
        yield
    finally:
        _level.reset(token)


def note(message: str) -> None:
    """One line on stderr, unless quiet."""
    if _level.get() != QUIET:
        print(message, file=sys.stderr, flush=True)
