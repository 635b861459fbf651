"""Data: read rows, detect/normalise their format, split train/eval, tokenise."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import TunelabError
from .formats import FORMATS, detect_format, map_fields, normalise
from .io import read_rows
from .mix import SourceRows, mix, same_kind


@dataclass
class Examples:
    """Canonical examples of one format, split into train and eval."""

    format: str
    train: list[dict]
    eval: list[dict]
    sources: list[dict] = field(default_factory=list)  # per source: rows, eval, taken, share (see mix)


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
    """Load train (and eval) data as the run config says, checking the stage accepts the format.

    ``data.train`` may be a mix of sources (see ``mix``); every example carries its source's name
    as ``source``, and ``Examples.sources`` reports how many rows each gave.
    """
    sources = _read_sources(data_cfg)
    first = sources[0]
    fmt = first.format
    if fmt not in accept:
        raise TunelabError(
            f"{first.name} is in format '{fmt}', but this stage needs: {', '.join(accept)} "
            f"(set data.format / data.fields if detection was wrong)"
        )
    for other in sources[1:]:
        if not same_kind(other.format, fmt):
            raise TunelabError(f"{other.name} is in format '{other.format}' but {first.key} ({first.source.path}) "
                               f"is '{fmt}'; every source of a mix must have the same format (set its format / "
                               f"fields if detection was wrong)")
    train, eval_rows, report = mix(sources, seed, 0.0 if data_cfg.eval else data_cfg.eval_fraction)
    if data_cfg.eval:
        eval_fmt, eval_rows = load_file(data_cfg.eval, data_cfg.format, data_cfg.fields, data_cfg.split,
                                        data_cfg.system_prompt)
        if eval_fmt != fmt:
            raise TunelabError(f"data {data_cfg.eval} is in format '{eval_fmt}' but train is '{fmt}'")
        eval_rows = [{**row, "source": data_cfg.eval} for row in eval_rows]
    return Examples(fmt, train, eval_rows, report)


def _read_sources(data_cfg) -> list[SourceRows]:
    """Every source of data.train (and data.replay), read and normalised, in config order."""
    resolved = data_cfg.sources()
    paths = [source.path for _, source in resolved]
    out = []
    for key, source in resolved:
        fmt, rows = load_file(source.path, source.format, source.fields, source.split, data_cfg.system_prompt)
        label = source.path if paths.count(source.path) == 1 else f"{source.path} ({key})"  # the same file twice
        out.append(SourceRows(key, source, label, fmt, rows))
    return out
