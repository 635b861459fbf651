"""Uploaded files for OpenAI's files API: validated chat / preference JSONL stored under generated ids.

A file lives at ``DATA/files/<id>.jsonl`` with its metadata beside it (``<id>.json``). The client's
file name is metadata only, never a path, so no upload can write outside ``DATA/files``. Each upload
is validated line by line as OpenAI's fine-tuning formats (errors name the line):

  supervised  {"messages": [{"role", "content"}, ...]}
  dpo         {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content"}],
               "non_preferred_output": [...]}
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

from ..core.errors import TunelabError
from ..data.formats import normalise
from ..runs.directory import write_json_atomic

PURPOSES = ("fine-tune",)  # the only purpose a local fine-tuning server has a use for
_ID = re.compile(r"^file-[A-Za-z0-9]{24}$")


def _check_messages(raw, where: str) -> list[dict]:
    """OpenAI chat messages -> [{role, content}] (tunelab's messages format does the checking)."""
    return normalise({"messages": raw}, "messages", where)["messages"]


def _assistant_text(raw, where: str, field: str) -> str:
    if not isinstance(raw, list) or not raw:
        raise TunelabError(f"{where}: field '{field}' must be a non-empty list of assistant messages")
    texts = []
    for turn, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") != "assistant" \
                or not isinstance(message.get("content"), str) or not message["content"].strip():
            raise TunelabError(f"{where}: {field}[{turn}] must be {{\"role\": \"assistant\", \"content\": TEXT}}")
        texts.append(message["content"])
    return "\n".join(texts)


def _prompt_text(messages: list[dict]) -> str:
    """The conversation before the response as one prompt (tunelab's preference rows carry a text prompt)."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def parse_row(row, kind: str, where: str) -> dict:
    """One uploaded line -> a tunelab row: messages (supervised) or preference {prompt, chosen, rejected} (dpo)."""
    if not isinstance(row, dict):
        raise TunelabError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if kind == "supervised":
        if "messages" not in row:
            raise TunelabError(f"{where}: field 'messages' is missing (OpenAI chat format: {{\"messages\": [...]}})")
        return {"messages": _check_messages(row["messages"], where)}
    source = row.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise TunelabError(f"{where}: field 'input' must be an object with 'messages' (OpenAI preference format)")
    prompt = source["messages"]
    if not isinstance(prompt, list) or not prompt:
        raise TunelabError(f"{where}: field 'input.messages' must be a non-empty list of {{role, content}}")
    for turn, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise TunelabError(f"{where}: input.messages[{turn}] must be {{role: system|user|assistant, content: TEXT}}")
    chosen = _assistant_text(row.get("preferred_output"), where, "preferred_output")
    rejected = _assistant_text(row.get("non_preferred_output"), where, "non_preferred_output")
    if chosen.strip() == rejected.strip():
        raise TunelabError(f"{where}: 'preferred_output' and 'non_preferred_output' are identical")
    return {"prompt": _prompt_text(prompt), "chosen": chosen, "rejected": rejected}


def validate_jsonl(data: bytes) -> tuple[str, int]:
    """Check an upload; return (kind, rows) with kind 'supervised' or 'dpo' (chosen by the first row)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TunelabError("file is not UTF-8 text (JSONL expected: one JSON object per line)") from None
    kind, rows = None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunelabError(f"{where}: not valid JSON ({exc.msg}); JSONL expects one JSON object per line") from None
        if kind is None:
            kind = "dpo" if isinstance(row, dict) and "input" in row and "messages" not in row else "supervised"
        parse_row(row, kind, where)
        rows += 1
    if rows == 0:
        raise TunelabError("file is empty: it holds no JSONL rows")
    return kind, rows


class FileStore:
    """Files under ``root`` (``DATA/files``), addressed by generated ids only."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, file_id: str) -> tuple[Path, Path] | None:
        if not isinstance(file_id, str) or not _ID.match(file_id):  # an id is never a path
            return None
        return self.root / f"{file_id}.jsonl", self.root / f"{file_id}.json"

    def create(self, data: bytes, filename: str, purpose: str) -> dict:
        if purpose not in PURPOSES:
            raise TunelabError(f"purpose '{purpose}' is not supported; use one of: {', '.join(PURPOSES)}")
        kind, rows = validate_jsonl(data)
        return self._store(data, filename, purpose, {"format": kind, "rows": rows})

    def add_result(self, data: bytes, filename: str) -> dict:
        """A job's results (CSV of step metrics), as OpenAI attaches them: purpose 'fine-tune-results'."""
        return self._store(data, filename, "fine-tune-results", {"format": "results", "rows": None})

    def _store(self, data: bytes, filename: str, purpose: str, details: dict) -> dict:
        file_id = "file-" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                                    for _ in range(24))
        content, meta = self._paths(file_id)
        staged = content.with_suffix(".part")
        staged.write_bytes(data)
        os.replace(staged, content)
        record = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                  # Only the base name, and only as a label: the file is stored under its id.
                  "filename": os.path.basename(str(filename).replace("\\", "/")) or "upload.jsonl",
                  "purpose": purpose, "status": "processed", "status_details": None,
                  "expires_at": None, "tunelab": details}
        write_json_atomic(meta, record)
        return public(record)

    def record(self, file_id: str) -> dict | None:
        paths = self._paths(file_id)
        if paths is None or not paths[1].is_file():
            return None
        return json.loads(paths[1].read_text())

    def get(self, file_id: str) -> dict | None:
        record = self.record(file_id)
        return public(record) if record else None

    def content(self, file_id: str) -> bytes | None:
        paths = self._paths(file_id)
        return paths[0].read_bytes() if paths and paths[0].is_file() else None

    def list(self, purpose: str | None = None) -> list[dict]:
        records = [json.loads(p.read_text()) for p in self.root.glob("file-*.json")]
        records = [r for r in records if purpose is None or r["purpose"] == purpose]
        return [public(r) for r in sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)]

    def delete(self, file_id: str) -> bool:
        paths = self._paths(file_id)
        if paths is None or not paths[1].is_file():
            return False
        for path in paths:
            path.unlink(missing_ok=True)
        return True

    def tunelab_rows(self, file_id: str) -> list[dict]:
        """The file's rows converted to tunelab's formats (messages, or preference pairs for DPO)."""
        record = self.record(file_id)
        if record is None:
            raise TunelabError(f"file '{file_id}' does not exist")
        kind = record["tunelab"]["format"]
        text = self.content(file_id).decode("utf-8")
        return [parse_row(json.loads(line), kind, f"line {n}")
                for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def public(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "tunelab"}
