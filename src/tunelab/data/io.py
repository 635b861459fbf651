"""Read rows from local files (JSONL/JSON/CSV/Parquet) or a Hub dataset."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..core import console
from ..core.errors import TunelabError

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(source: str, split: str = "train") -> list[dict]:
    """All rows of a data source as dicts. Errors name the file and, where known, the row."""
    path = Path(source).expanduser()
    if path.is_file():
        rows = _read_file(path)
    elif path.exists():
        raise TunelabError(f"data path {path} is a directory; give a .jsonl/.json/.csv/.parquet file")
    elif _looks_like_hub_id(source):
        rows = _read_hub(source, split)
    else:
        raise TunelabError(f"data file not found: {source}")
    if not rows:
        raise TunelabError(f"data file {source} has no rows")
    return rows


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and Path(source).suffix == "" and not source.startswith((".", "/", "~"))


def _read_file(path: Path) -> list[dict]:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TunelabError(f"data file {path}: unsupported type '{path.suffix}'; use .jsonl, .json, .csv or .parquet")
    if path.stat().st_size == 0:
        raise TunelabError(f"data file {path} is empty")
    if kind == "jsonl":
        return _read_jsonl(path)
    if kind == "json":
        return _read_json(path)
    if kind == "csv":
        with path.open(encoding="utf-8") as handle:
            try:
                lines = sum(1 for line in handle if line.strip())
            except UnicodeDecodeError:  # datasets' own errors for both are cryptic
                raise TunelabError(f"data file {path} is not UTF-8 text") from None
            if lines <= 1:
                raise TunelabError(f"data file {path} has no rows (only a header)")
    return _read_with_datasets(path, kind)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if not rows and line.lstrip().startswith("[") and path.suffix.lower() != ".json" \
                        and _is_json_array_of_objects(path):
                    raise TunelabError(f"data file {path} holds a JSON array, but {path.suffix} means JSON lines "
                                       "(one object per line); rename it to .json or write one object per line")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TunelabError(f"data file {path} line {number}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise TunelabError(f"data file {path} line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        except UnicodeDecodeError:
            raise TunelabError(f"data file {path} is not UTF-8 text") from None
    return rows


def _is_json_array_of_objects(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, list) and bool(data) and all(isinstance(row, dict) for row in data)


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # A .json file may also be JSON-lines.
        try:
            return _read_jsonl(path)
        except TunelabError:
            raise TunelabError(f"data file {path}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TunelabError(f"data file {path}: expected a list of JSON objects")
    return data


@contextlib.contextmanager
def _datasets_bars():
    """datasets' progress bars ("Generating train split") only in verbose output."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hide = console.level() != console.VERBOSE and not are_progress_bars_disabled()
    if hide:
        disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            enable_progress_bars()


def _read_with_datasets(path: Path, kind: str) -> list[dict]:
    from datasets import load_dataset

    try:
        with _datasets_bars():
            return load_dataset(kind, data_files=str(path), split="train").to_list()
    except Exception as exc:  # datasets raises many types; all mean "unreadable"
        for _ in range(8):  # the innermost reason, not datasets' "an error occurred while generating"
            exc = exc.__cause__ or exc.__context__ or exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunelabError(f"data file {path} is not readable as {kind}: {first}") from None


def _read_hub(name: str, split: str) -> list[dict]:
    from datasets import load_dataset

    try:
        with _datasets_bars():
            return load_dataset(name, split=split).to_list()
    except Exception as exc:
        text = str(exc)
        if "offline" in text.lower() or "connect" in text.lower() or "couldn't reach" in text.lower():
            raise TunelabError(f"data '{name}' is not a local file and the Hugging Face Hub cannot be reached (offline)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise TunelabError(f"cannot load Hub dataset '{name}' (split '{split}'): {first}") from None
