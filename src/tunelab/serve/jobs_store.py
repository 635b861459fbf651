"""Fine-tuning jobs and their events in an embedded SQLite database (stdlib sqlite3, WAL).

Jobs are stored as their OpenAI-shaped object (JSON) plus the columns the worker queries; a
server restart reads them back unchanged, so no job is lost.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection shared by the worker and request threads
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                status TEXT NOT NULL, job TEXT NOT NULL, config TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}');
            CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                job_id TEXT NOT NULL, event TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
        """)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ jobs

    def insert(self, job: dict, config: dict) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO jobs (id, status, job, config) VALUES (?, ?, ?, ?)",
                             (job["id"], job["status"], json.dumps(job), json.dumps(config)))

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def config(self, job_id: str) -> dict:
        with self._lock:
            return json.loads(self._db.execute("SELECT config FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])

    def update(self, job_id: str, **fields) -> dict:
        """Set fields of the job object (and its status column) in one transaction; return the new job."""
        with self._lock, self._db:
            job = json.loads(self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
            job.update(fields)
            self._db.execute("UPDATE jobs SET status = ?, job = ? WHERE id = ?", (job["status"], json.dumps(job), job_id))
        return job

    def progress(self, job_id: str) -> dict:
        with self._lock:
            return json.loads(self._db.execute("SELECT progress FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def with_status(self, *statuses: str) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(f"SELECT job FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses).fetchall()
        return [json.loads(r[0]) for r in rows]

    def page(self, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists jobs; ``after`` is the id of the last job of the previous page."""
        with self._lock:
            start = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone() if after else None
            bound = start[0] if start else None
            if after and bound is None:
                return [], False
            rows = self._db.execute(
                "SELECT job FROM jobs WHERE (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                (bound, bound, limit + 1)).fetchall()
        jobs = [json.loads(r[0]) for r in rows]
        return jobs[:limit], len(jobs) > limit

    # ------------------------------------------------------------------ events

    def add_event(self, job_id: str, message: str, level: str = "info", data: dict | None = None,
                  kind: str = "message") -> dict:
        event = {"id": new_id("ftevent-"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
                 "level": level, "message": message, "data": data or {}, "type": kind}
        with self._lock, self._db:
            self._db.execute("INSERT INTO events (id, job_id, event) VALUES (?, ?, ?)",
                             (event["id"], job_id, json.dumps(event)))
        return event

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first (as OpenAI); ``after`` is the id of the last event of the previous page."""
        with self._lock:
            start = self._db.execute("SELECT seq FROM events WHERE id = ? AND job_id = ?", (after, job_id)).fetchone() \
                if after else None
            if after and start is None:
                return [], False
            bound = start[0] if start else None
            rows = self._db.execute(
                "SELECT event FROM events WHERE job_id = ? AND (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                (job_id, bound, bound, limit + 1)).fetchall()
        events = [json.loads(r[0]) for r in rows]
        return events[:limit], len(events) > limit
