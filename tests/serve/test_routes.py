"""The routes over raw HTTP (httpx): task endpoints, admin, the watcher, and every bad-input case as an
OpenAI-shaped 4xx."""
from __future__ import annotations

import json
import shutil

import httpx2 as httpx  # the HTTP client the openai package ships on
import pytest

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_classify(http):
    one = http.post("/classify", json={"model": "cls", "input": "I love snow!"}).json()
    assert one["object"] == "list" and one["model"] == "cls" and one["usage"]["prompt_tokens"] > 0
    row = one["data"][0]
    assert row["index"] == 0 and row["label"] in ("0", "1")
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    many = http.post("/classify", json={"model": "cls", "input": ["I love snow!", "I hate coal."]}).json()
    assert [r["index"] for r in many["data"]] == [0, 1]
    assert many["data"][0]["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


def test_score(http):
    one = http.post("/score", json={"model": "rm", "prompt": "What colour is snow?", "response": "White."}).json()
    assert one["object"] == "list" and isinstance(one["data"][0]["score"], float)
    many = http.post("/score", json={"model": "rm", "prompt": "What colour is snow?",
                                     "response": ["White.", "I don't know."]}).json()
    assert [r["index"] for r in many["data"]] == [0, 1]
    assert many["data"][0]["score"] == pytest.approx(one["data"][0]["score"], abs=1e-4)
    assert "2 prompts but 3 responses" in _error(
        http.post("/score", json={"model": "rm", "prompt": ["a", "b"], "response": ["x", "y", "z"]}), 400)["message"]


def test_wrong_kind_names_the_models_kind(http):
    assert "is a generate model" in _error(http.post("/classify", json={"model": "lora-a", "input": "x"}), 400)["message"]
    assert "is a score model" in _error(http.post("/completions", json={"model": "rm", "prompt": "x"}), 400)["message"]
    assert "is a classify model" in _error(
        http.post("/score", json={"model": "cls", "prompt": "x", "response": "y"}), 400)["message"]


@pytest.mark.parametrize("body,param", [
    ({"model": "lora-a", "messages": USER, "bogus": 1}, "bogus"),
    ({"model": "lora-a", "messages": USER, "max_tokens": "5"}, "max_tokens"),
    ({"model": "lora-a", "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": "lora-a", "messages": USER, "max_tokens": 300}, "max_tokens"),  # context 256 in these tests
    ({"model": "lora-a", "messages": USER, "top_p": 1.5}, "top_p"),
    ({"model": "lora-a", "messages": USER, "n": 0}, "n"),
    ({"model": "lora-a", "messages": USER, "n": 17}, "n"),  # > the server's max_n
    ({"model": "lora-a", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "lora-a", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "lora-a", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": "lora-a"}, "messages"),
    ({"model": "lora-a", "messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
])
def test_bad_chat_requests(http, body, param):
    assert _error(http.post("/chat/completions", json=body), 400)["param"] == param


def test_unknown_model_and_malformed_json(http):
    assert _error(http.post("/chat/completions", json={"model": "nope", "messages": USER}), 404)["code"] == "model_not_found"
    assert _error(http.get("/models/nope"), 404)["code"] == "model_not_found"
    bad = http.post("/chat/completions", content=b'{"model": "lora-a", "messages": [', headers={"content-type": "application/json"})
    assert _error(bad, 400)["code"] == "invalid_json"
    assert _error(http.post("/completions", json={"model": "lora-a", "prompt": [999999]}), 400)
    assert _error(http.post("/completions", json={"model": "lora-a", "prompt": ""}), 400)["param"] == "prompt"
    assert _error(http.get("/no/such/route"), 404)


def test_body_cap_with_and_without_content_length(http, serve_state, monkeypatch):
    monkeypatch.setattr(serve_state, "max_body_bytes", 1000)
    big = json.dumps({"model": "lora-a", "prompt": "x" * 2000}).encode()
    assert _error(http.post("/completions", content=big, headers={"content-type": "application/json"}), 413)

    def chunked():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for start in range(0, len(big), 100):
            yield big[start:start + 100]

    response = http.post("/completions", content=chunked(), headers={"content-type": "application/json"})
    assert _error(response, 413)["code"] == "request_too_large"
    small = json.dumps({"model": "lora-a", "prompt": "hi", "max_tokens": 1}).encode()
    assert http.post("/completions", content=iter([small]), headers={"content-type": "application/json"}).status_code == 200


def test_stream_error_and_disconnect(http, serve_state):
    with http.stream("POST", "/chat/completions", json={"model": "lora-a", "messages": USER, "stream": True,
                                                        "max_tokens": 200, "temperature": 1.0}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(response.iter_lines())
        assert first.startswith("data: {")
    # the client went away after one event: the engine frees the slot (nothing left running soon after)
    import time

    deadline = time.monotonic() + 20
    while serve_state.engine._active() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serve_state.engine._active() == 0


def test_admin_add_and_remove(http, served_runs):
    added = http.post("/admin/models", json={"path": str(served_runs["lora-b"]), "name": "lora-b-again"})
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "lora-b-again" and added.json()["kind"] == "generate"
    reply = http.post("/completions", json={"model": "lora-b-again", "prompt": "Snow is", "max_tokens": 3,
                                            "temperature": 0}).json()
    same = http.post("/completions", json={"model": "lora-b", "prompt": "Snow is", "max_tokens": 3,
                                           "temperature": 0}).json()
    assert reply["choices"][0]["text"] == same["choices"][0]["text"]
    assert "already served" in _error(http.post("/admin/models", json={"path": str(served_runs["lora-b"]),
                                                                       "name": "lora-b-again"}), 400)["message"]
    assert http.delete("/admin/models/lora-b-again").json() == {"id": "lora-b-again", "object": "model", "deleted": True}
    assert _error(http.get("/models/lora-b-again"), 404)
    assert _error(http.delete("/admin/models/lora-b-again"), 404)
    assert _error(http.post("/admin/models", json={"path": "/no/such/run"}), 400)["param"] == "path"
    assert _error(http.post("/admin/models", json={"path": "x" * 5000}), 400)["param"] == "path"


def test_watcher_adds_a_new_finished_run(serve_state, served_runs, tmp_path):
    from tunelab.serve.server import Watcher

    lines = []
    watcher = Watcher(serve_state.registry, tmp_path, log=lines.append)
    (tmp_path / "half").mkdir()
    shutil.copy(served_runs["lora-a"] / "config.yaml", tmp_path / "half")  # still training: no summary.json
    assert watcher.poll() == []
    shutil.copytree(served_runs["lora-a"], tmp_path / "lora-watched")
    try:
        assert watcher.poll() == ["lora-watched"] and watcher.poll() == []
        assert serve_state.registry.get("lora-watched").method == "lora"
    finally:
        serve_state.registry.remove("lora-watched")
    assert lines == [f"watch: serving {tmp_path / 'lora-watched'} as 'lora-watched'"]


def test_empty_texts_are_refused(http):
    assert _error(http.post("/classify", json={"model": "cls", "input": ["fine", ""]}), 400)["param"] == "input[1]"


def test_health_answers_probes_without_the_api_key(serve_state):
    """GET /health is for container and Kubernetes probes: no key needed, 503 once the engine is not running."""
    from serve.conftest import ServerThread
    from tunelab.serve.app import ServerState
    from tunelab.serve.engine import Engine

    keyed = ServerThread(ServerState(registry=serve_state.registry, engine=serve_state.engine, api_key="s3cret"))
    stopped = ServerThread(ServerState(registry=serve_state.registry, engine=Engine(serve_state.registry)))
    try:
        base = keyed.url.removesuffix("/v1")
        health = httpx.get(f"{base}/health", timeout=30)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "models": len(serve_state.registry.models())}
        assert httpx.get(f"{keyed.url}/models", timeout=30).status_code == 401  # every other route keeps the key
        down = httpx.get(f"{stopped.url.removesuffix('/v1')}/health", timeout=30)
        assert down.status_code == 503 and down.json()["status"] == "engine stopped"
    finally:
        keyed.close()
        stopped.close()
