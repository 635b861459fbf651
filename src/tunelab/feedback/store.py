"""Where judgements go: three JSONL files in one directory, each line written whole.

  preference.jsonl  {prompt, chosen, rejected, ...}   one line per "this one is better"
  rating.jsonl      {prompt, response, score, ...}    one line per 1-5 rating
  judgements.jsonl  every decision (better/tie/skip), written last: an item listed here is done

`reward` and `dpo` read preference.jsonl (and `reward` rating.jsonl) directly. A line is one
``os.write`` on an O_APPEND descriptor followed by fsync, under a lock: a crash can lose the
line being written, never leave half of it (and a reader skips a torn tail from elsewhere).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

PREFERENCE, RATING, JUDGEMENTS = "preference.jsonl", "rating.jsonl", "judgements.jsonl"


class JudgementStore:
    def __init__(self, directory: str | Path):
        from ..runs.directory import check_writable

        self.directory = Path(directory)
        check_writable(self.directory)  # one-line error for a path that cannot be created (a file, /proc/...)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, name: str, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a regular file takes it whole; anything else is a disk problem
                raise OSError(f"short write to {self.directory / name}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def record(self, judgement: dict, preference: dict | None, ratings: list[dict]) -> None:
        """One decision: data lines first, the judgement (the "done" mark) last, all under one lock."""
        with self._lock:
            if preference is not None:
                self.append(PREFERENCE, preference)
            for rating in ratings:
                self.append(RATING, rating)
            self.append(JUDGEMENTS, judgement)

    def read(self, name: str) -> list[dict]:
        path = self.directory / name
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash elsewhere: skip it, keep the rest
        return rows

    def done_items(self) -> set[str]:
        with self._lock:
            return {row["item"] for row in self.read(JUDGEMENTS) if "item" in row}
