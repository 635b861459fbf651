"""/v1/files and the FileStore: validation that names the line, generated ids, no path escapes."""
from __future__ import annotations

import httpx2 as httpx
import pytest
from .jobs_helpers import CHAT_ROWS, DPO_ROWS, jsonl, serve

from tunelab.core.errors import TunelabError
from tunelab.serve.app import ServerState
from tunelab.serve.files import FileStore, validate_jsonl
from tunelab.serve.jobs import JobService


def test_validate_detects_the_format_and_counts_rows():
    assert validate_jsonl(jsonl(CHAT_ROWS)) == ("supervised", len(CHAT_ROWS))
    assert validate_jsonl(jsonl(DPO_ROWS) + b"\n") == ("dpo", len(DPO_ROWS))


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\n  \n", "empty"),
    (b"\xff\xfe", "not UTF-8"),
    (jsonl(CHAT_ROWS[:2]) + b"{not json\n", "line 3: not valid JSON"),
    (jsonl(CHAT_ROWS[:1]) + b'{"text": "hi"}\n', "line 2: field 'messages' is missing"),
    (b'[1, 2]\n', "line 1: expected a JSON object"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "line 1: messages[0] has role 'robot'"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: no assistant message"),
    (jsonl(DPO_ROWS[:1]) + b'{"input": {"messages": []}}\n', "line 2: field 'input.messages'"),
    (jsonl([{**DPO_ROWS[0], "non_preferred_output": DPO_ROWS[0]["preferred_output"]}]), "line 1: 'preferred_output'"),
    (jsonl([{**DPO_ROWS[0], "preferred_output": [{"role": "user", "content": "x"}]}]), "line 1: preferred_output[0]"),
])
def test_bad_files_are_refused_naming_the_line(data, message):
    with pytest.raises(TunelabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_jsonl(data)


def test_store_keeps_files_under_generated_ids(tmp_path):
    store = FileStore(tmp_path / "files")
    record = store.create(jsonl(CHAT_ROWS), "../../escape.jsonl", "fine-tune")
    assert record["id"].startswith("file-") and record["filename"] == "escape.jsonl"
    assert not (tmp_path / "escape.jsonl").exists() and not (tmp_path.parent / "escape.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [f"{record['id']}.json", f"{record['id']}.jsonl"]
    for trick in ("../files/" + record["id"], "file-../../x", record["id"] + "/../x", "/etc/passwd"):
        assert store.get(trick) is None and store.content(trick) is None and not store.delete(trick)
    assert store.content(record["id"]) == jsonl(CHAT_ROWS)
    with pytest.raises(TunelabError, match="purpose 'assistants'"):
        store.create(jsonl(CHAT_ROWS), "x.jsonl", "assistants")


@pytest.fixture
def server(tmp_path):
    service = JobService(tmp_path / "data")  # not started: the files API needs no worker
    state = ServerState(jobs=service, max_upload_bytes=4096)
    with serve(state) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, tmp_path
    service.close()


def test_upload_list_retrieve_content_delete(server):
    client, _ = server
    response = client.post("/v1/files", files={"file": ("train.jsonl", jsonl(CHAT_ROWS[:4]))},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    record = response.json()
    assert {k: record[k] for k in ("object", "bytes", "filename", "purpose", "status")} == {
        "object": "file", "bytes": len(jsonl(CHAT_ROWS[:4])), "filename": "train.jsonl", "purpose": "fine-tune",
        "status": "processed"}
    assert isinstance(record["created_at"], int)
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [record["id"]]
    assert client.get(f"/v1/files/{record['id']}").json() == record
    assert client.get(f"/v1/files/{record['id']}/content").content == jsonl(CHAT_ROWS[:4])
    assert client.delete(f"/v1/files/{record['id']}").json() == {"id": record["id"], "object": "file", "deleted": True}
    missing = client.get(f"/v1/files/{record['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"


def test_bad_uploads_get_openai_errors(server):
    client, tmp_path = server

    def upload(data, name="x.jsonl", purpose="fine-tune"):
        return client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})

    bad = upload(jsonl(CHAT_ROWS[:1]) + b"oops\n")
    assert bad.status_code == 400 and "line 2" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "file"
    assert upload(b"").status_code == 400
    wrong = upload(jsonl(CHAT_ROWS[:1]), purpose="batch")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
    big = upload(jsonl(CHAT_ROWS * 40))  # over the 4096-byte cap of this server
    assert big.status_code == 413
    assert client.post("/v1/files", data={"purpose": "fine-tune"}).status_code == 400  # no file part
    escaped = upload(jsonl(CHAT_ROWS[:2]), name="../../../../tmp/evil.jsonl")
    assert escaped.status_code == 200 and escaped.json()["filename"] == "evil.jsonl"
    stored = sorted(p.name for p in (tmp_path / "data" / "files").iterdir())
    assert stored == [escaped.json()["id"] + ".json", escaped.json()["id"] + ".jsonl"]
    assert client.get("/v1/files/..%2F..%2Fjobs.sqlite").status_code == 404
