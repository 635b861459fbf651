"""Data: read rows, detect/normalise their format, split train/eval, tokenise."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.errors import TunelabError
from .formats import FORMATS, detect_format, map_fields, normalise
from .io import read_rows


@dataclass
class Examples:
    """Canonical examples of one format, split into train and eval."""

    format: str
    train: list[dict]
    eval: list[dict]


def load_file(source: str, data_format: str = "auto", fields: dict | None = None, split: str = "train",
              system_prompt: str | None = None) -> tuple[str, list[dict]]:
    """Read, map and normalise every row of one source -> (format, examples)."""
    raw = read_rows(source, split)
    absent = {canonical: column for canonical, column in (fields or {}).items() if column not in raw[0]}
    if absent:  # a typo in data.fields would otherwise surface as a confusing "field missing"
        canonical, column = next(iter(absent.items()))
        raise TunelabError(f"data {source}: data.fields maps '{canonical}' to column '{column}', which is not in "
                           f"the data (columns: {', '.join(sorted(raw[0]))})")
    rows = [map_fields(row, fields or {}) for row in raw]
    fmt = detect_format(rows[0], source) if data_format == "auto" else data_format
    if fmt not in FORMATS:
        raise TunelabError(f"unknown data format '{fmt}'; choose from: {', '.join(FORMATS)}")
    examples = [normalise(row, fmt, f"data {source} row {i + 1}", system_prompt) for i, row in enumerate(rows)]
    return fmt, examples


def load_examples(data_cfg, seed: int, accept: tuple[str, ...]) -> Examples:
    """Load train (and eval) data as the run config says, checking the stage accepts the format."""
    fmt, rows = load_file(data_cfg.train, data_cfg.format, data_cfg.fields, data_cfg.split, data_cfg.system_prompt)
    if fmt not in accept:
        raise TunelabError(
            f"data {data_cfg.train} is in format '{fmt}', but this stage needs: {', '.join(accept)} "
            f"(set data.format / data.fields if detection was wrong)"
        )
    rng = random.Random(seed)
    rng.shuffle(rows)
    if data_cfg.max_rows:
        rows = rows[: data_cfg.max_rows]
    if data_cfg.eval:
        eval_fmt, eval_rows = load_file(data_cfg.eval, data_cfg.format, data_cfg.fields, data_cfg.split,
                                        data_cfg.system_prompt)
        if eval_fmt != fmt:
            raise TunelabError(f"data {data_cfg.eval} is in format '{eval_fmt}' but train is '{fmt}'")
        return Examples(fmt, rows, eval_rows)
    n_eval = int(round(len(rows) * data_cfg.eval_fraction))
    if data_cfg.eval_fraction > 0 and n_eval == 0 and len(rows) > 1:
        n_eval = 1
    if n_eval >= len(rows):
        raise TunelabError(f"data {data_cfg.train}: {len(rows)} rows are too few to hold out eval_fraction={data_cfg.eval_fraction}")
    return Examples(fmt, rows[n_eval:], rows[:n_eval])
