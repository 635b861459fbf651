"""End to end with the official `openai` client against a real uvicorn server on 127.0.0.1."""
from __future__ import annotations

import openai
import pytest


def test_models_list_and_get(client, served_runs):
    models = {m.id: m for m in client.models.list().data}
    assert set(served_runs) | {"tiny-llama"} <= set(models)
    assert models["lora-a"].object == "model" and models["lora-a"].owned_by == "tunelab"
    card = client.models.retrieve("cls").model_dump()
    assert card["kind"] == "classify" and card["labels"] == ["0", "1"]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("model", ["lora-a", "lora-b", "tiny-llama"])
def test_chat_completion(client, model):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What colour is snow?"}],
                                           max_tokens=5, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == model
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 1 <= reply.usage.completion_tokens <= 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_adapters_answer_differently(client):
    """The request's model picks the adapter: greedy replies of the two LoRA runs and the base differ."""
    ask = dict(messages=[{"role": "user", "content": "What colour is grass?"}], max_tokens=8, temperature=0)
    replies = {m: client.completions.create(model=m, prompt="What colour is grass? It is", max_tokens=8,
                                            temperature=0).choices[0].text for m in ("lora-a", "lora-b", "tiny-llama")}
    assert len(set(replies.values())) >= 2, replies
    again = client.chat.completions.create(model="lora-a", **ask).choices[0].message.content
    assert again == client.chat.completions.create(model="lora-a", **ask).choices[0].message.content  # greedy is stable


def test_chat_streaming_matches_non_streaming(client):
    ask = dict(model="lora-a", messages=[{"role": "user", "content": "Colour of coal?"}], max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_completions_and_n_with_seed(client):
    reply = client.completions.create(model="lora-b", prompt=["The sky is", "Snow is"], max_tokens=4, n=2, seed=3,
                                      temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.object == "text_completion" and reply.usage.completion_tokens >= 4
    again = client.completions.create(model="lora-b", prompt=["The sky is", "Snow is"], max_tokens=4, n=2, seed=3,
                                      temperature=1.0)
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]  # seeded: reproducible
    streamed = list(client.completions.create(model="lora-b", prompt="The sky is", max_tokens=4, stream=True,
                                              temperature=0))
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")
    echo = client.completions.create(model="lora-b", prompt="The sky is", max_tokens=2, echo=True, temperature=0)
    assert echo.choices[0].text.startswith("The sky is")


def test_stop_string_ends_the_reply(client):
    free = client.completions.create(model="tiny-llama", prompt="one two", max_tokens=12, temperature=0).choices[0].text
    assert len(free) > 2
    stop = free[len(free) // 2:len(free) // 2 + 2]
    cut = client.completions.create(model="tiny-llama", prompt="one two", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert free.startswith(cut.choices[0].text)


def test_errors_raise_openai_exceptions(client):
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="lora-a", messages=user, max_tokens=10_000)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="cls", messages=user)
    assert "classify model" in err.value.body["message"] and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="lora-a", messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="lora-a", messages=user, temperature=2.5)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="lora-a", prompt="x " * 400, max_tokens=1)
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "prompt"


def test_api_key(serve_state):
    from serve.conftest import ServerThread
    from tunelab.serve.app import ServerState

    keyed = ServerThread(ServerState(registry=serve_state.registry, engine=serve_state.engine, api_key="s3cret"))
    try:
        with openai.OpenAI(base_url=keyed.url, api_key="wrong", timeout=30, max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with openai.OpenAI(base_url=keyed.url, api_key="s3cret", timeout=30, max_retries=0) as good:
            assert good.models.list().data
    finally:
        keyed.close()
