"""Mix training sources: how many rows each gives, the eval split from the first, one seeded shuffle.

A source without a fraction gives all its rows (or its first ``max_rows`` after shuffling). A
source with fraction f gives round(f x total) rows, total being the size of the mixed training
set; so with fixed-size sources totalling N and fractions summing to F < 1, total = N / (1 - F).
When every source has a fraction (summing to 1), total is the largest mix the sources without
``upsample`` can fill. Rows are drawn without replacement from a seeded shuffle of each source;
``upsample`` repeats a too-small source's rows instead (each as often as the others, give or
take one). The eval split (``eval_fraction``) is held out from the first source before any of
this, so eval measures the target domain and no eval row is trained on.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..core.errors import TunelabError

# instruction rows normalise to chats: the two mix (and train) alike
_CANONICAL = {"instruction": "messages"}


def same_kind(a: str, b: str) -> bool:
    """Do rows of formats ``a`` and ``b`` normalise to the same canonical examples?"""
    return _CANONICAL.get(a, a) == _CANONICAL.get(b, b)


@dataclass
class SourceRows:
    """One source of a mix, read and normalised."""

    key: str  # where the config names it: data.train, data.train[1], data.replay
    source: object  # the resolved DataSource (path, fraction, max_rows, upsample)
    label: str  # what each of its examples carries as "source"
    format: str
    rows: list[dict]

    @property
    def name(self) -> str:
        return f"{self.key} ({self.source.path})" if self.key != "data.train" else f"data {self.source.path}"


def _held_out(n: int, eval_fraction: float, name: str) -> int:
    n_eval = int(round(n * eval_fraction))
    if eval_fraction > 0 and n_eval == 0 and n > 1:
        n_eval = 1
    if n_eval >= n:
        raise TunelabError(f"{name}: {n} rows are too few to hold out eval_fraction={eval_fraction}")
    return n_eval


def _half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)  # round half up, not to even: 2.5 rows -> 3


def _upsampled(rows: list[dict], k: int) -> list[dict]:
    """k rows from ``rows`` (already shuffled): whole copies, then the first k mod n."""
    copies, rest = divmod(k, len(rows))
    return rows * copies + rows[:rest]


def mix(sources: list[SourceRows], seed: int, eval_fraction: float) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, report): the mixed training rows, the eval rows held out from the first source, and per
    source {key, source, format, rows, eval, taken, fraction, upsampled, share}."""
    available, report = [], []
    for i, s in enumerate(sources):
        rows = list(s.rows)
        # The first source keeps the single-file order (seeded by the seed alone); the others get their own.
        random.Random(seed if i == 0 else f"{seed}/{i}").shuffle(rows)
        if s.source.max_rows:
            rows = rows[: s.source.max_rows]
        n_eval = _held_out(len(rows), eval_fraction, s.name) if i == 0 else 0
        eval_rows = [{**row, "source": s.label} for row in rows[:n_eval]]
        available.append(rows[n_eval:])
        report.append({"key": s.key, "source": s.label, "format": s.format, "rows": len(s.rows), "eval": n_eval,
                       "fraction": s.source.fraction, "upsampled": False})
        if i == 0:
            held_out = eval_rows

    fixed = sum(len(rows) for s, rows in zip(sources, available) if s.source.fraction is None)
    fractions = sum(s.source.fraction for s in sources if s.source.fraction is not None)
    if any(s.source.fraction is None for s in sources):  # the config checked: fractions < 1
        total = fixed / (1 - fractions)
    else:  # every source has a fraction: the largest mix those that may not repeat rows can fill
        total = min(len(rows) / s.source.fraction + 1e-9 for s, rows in zip(sources, available) if not s.source.upsample)
        total = math.floor(total)

    train = []
    for s, rows, entry in zip(sources, available, report):
        if s.source.fraction is not None:
            want = _half_up(s.source.fraction * total)
            if want == 0:
                raise TunelabError(f"{s.name}: fraction {s.source.fraction:g} of a mix of {round(total)} training rows "
                                   "rounds to 0 rows; raise the fraction")
            if want > len(rows):
                if not s.source.upsample:
                    after = f" (after {entry['eval']} held out for eval)" if entry["eval"] else ""
                    raise TunelabError(f"{s.name}: fraction {s.source.fraction:g} of a mix of {round(total)} training "
                                       f"rows needs {want} rows, but it has {len(rows)}{after}; lower the fraction, "
                                       "or set upsample: true on it to repeat its rows")
                entry["upsampled"] = True
                rows = _upsampled(rows, want)
            rows = rows[:want]
        entry["taken"] = len(rows)
        train += [{**row, "source": s.label} for row in rows]
    if len(sources) > 1:
        random.Random(f"{seed}/mix").shuffle(train)  # a single source keeps its order (as before mixing existed)
    for entry in report:
        entry["share"] = entry["taken"] / len(train) if train else 0.0
    return train, held_out, report
