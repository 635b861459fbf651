"""The batching engine: concurrent requests for different runs on one base share forwards and each
reply equals what that run alone generates; joining mid-flight, stop strings, length, seeds,
streaming, cancel, runtime add/remove, bad input. Tiny runs from ``served_runs``."""
from __future__ import annotations

import asyncio
import time

import pytest

from tunelab.core.errors import TunelabError
from tunelab.serve.decoding import TextStream
from tunelab.serve.engine import Engine, Sampling
from tunelab.serve.registry import Registry, UnknownModel

from .served_runs import trained

GENERATORS = ("lora-a", "lora-b", "adapter", "ia3", "full")
PROMPT = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "served"
    root.mkdir(exist_ok=True)
    return {name: trained(name, root) for name in GENERATORS}


@pytest.fixture(scope="module")
def registry(runs):
    return Registry(list(runs.values()))


@pytest.fixture
def engine(registry):
    with Engine(registry, max_batch_size=16) as running:
        yield running


def _solo(run, prompt_ids, max_tokens):
    """Greedy tokens of ``run`` alone: ``tunelab.load(run)`` and ``model.generate``, up to EOS."""
    import torch

    import tunelab

    loaded = _solo.cache.get(str(run)) or _solo.cache.setdefault(str(run), tunelab.load(run))
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    tokens = out[0, len(prompt_ids):].tolist()
    eos = loaded.tokenizer.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


_solo.cache = {}


def _greedy(tokens: int, **more) -> Sampling:
    return Sampling(max_tokens=tokens, temperature=0.0, **more)


def test_concurrent_requests_for_different_runs_match_each_run_alone(registry, engine, runs):
    names = ["tiny-llama", *GENERATORS]
    prompts = {n: registry.chat_prompt(n, [{"role": "user", "content": f"What colour is item {i}?"}])
               for i, n in enumerate(names)}
    requests = {n: engine.submit(n, prompts[n], _greedy(10)) for n in names}
    for name, request in requests.items():
        request.result(timeout=120)
        reference = _solo(runs.get(name, name), prompts[name], 10)
        assert request.token_ids == reference, name
    outputs = {n: tuple(r.token_ids) for n, r in requests.items()}
    assert len({outputs[n] for n in ("tiny-llama", "lora-a", "lora-b", "adapter")}) == 4  # the runs really differ
    # One shared forward per step for the base and its adapters, one for the full run: 2 per step
    # (+ at most one prefill per request, for requests that arrive while a step runs), not one
    # forward per request and token (60).
    assert engine.steps <= 2 * 10 + len(names)


def test_mixed_rows_in_one_forward_give_each_run_its_own_logits(registry, runs):
    """Row routing at the logits level: also for (IA)³, whose greedy tiny-model tokens equal the base's."""
    import torch

    import tunelab

    names = ["tiny-llama", "lora-a", "lora-b", "adapter", "ia3"]
    ids = registry.chat_prompt("tiny-llama", PROMPT)
    backend = registry._entry("lora-a").backend
    assert all(registry._entry(n).backend is backend for n in names)  # one base for all of them
    batch = torch.tensor([ids] * len(names))
    with torch.inference_mode():
        mixed = backend.forward([registry._entry(n).route for n in names], input_ids=batch).logits[:, -1]
        alone = []
        for name in names:
            loaded = tunelab.load(runs.get(name, name))
            alone.append(loaded.model(input_ids=batch[:1]).logits[0, -1])
    for name, row, reference in zip(names, mixed, alone):
        torch.testing.assert_close(row, reference, atol=1e-4, rtol=1e-4, msg=name)
    assert (mixed[4] - mixed[0]).abs().max() > 1e-2  # (IA)³ changes the logits


def test_prompt_tuning_runs_generate_one_at_a_time_with_the_same_result(registry, engine, runs, tmp_path_factory):
    prompt_run = trained("prompt", tmp_path_factory.getbasetemp() / "served")
    registry.add(prompt_run, name="prompt")
    try:
        assert not registry._entry("prompt").backend.batchable
        ids = registry.chat_prompt("prompt", PROMPT)
        requests = [engine.submit("prompt", ids, _greedy(8)), engine.submit("lora-a", ids, _greedy(8))]
        for request in requests:
            request.result(timeout=60)
        assert requests[0].token_ids == _solo(prompt_run, ids, 8)
        assert requests[1].token_ids == _solo(runs["lora-a"], ids, 8)
    finally:
        registry.remove("prompt")


def test_a_request_joins_a_running_batch(registry, engine, runs):
    first_ids = registry.chat_prompt("lora-a", PROMPT)
    first = engine.submit("lora-a", first_ids, _greedy(40))
    deadline = time.monotonic() + 60
    while len(first.token_ids) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    second_ids = registry.chat_prompt("lora-b", [{"role": "user", "content": "Name the colour of snow."}])
    second = engine.submit("lora-b", second_ids, _greedy(8))
    assert not first.done  # still decoding when the second arrives
    second.result(timeout=60)
    first.result(timeout=60)
    assert second.token_ids == _solo(runs["lora-b"], second_ids, 8)
    assert first.token_ids == _solo(runs["lora-a"], first_ids, 40)


def test_stop_string_ends_the_reply_before_it(registry, engine, runs):
    ids = registry.chat_prompt("lora-a", PROMPT)
    full_text, _, _ = engine.submit("lora-a", ids, _greedy(12)).result(timeout=60)
    stop = full_text[3:6]
    assert stop.strip()
    text, reason, tokens = engine.submit("lora-a", ids, _greedy(12, stop=["zzz-never", stop])).result(timeout=60)
    assert (text, reason) == (full_text[: full_text.index(stop)], "stop")
    assert tokens < 12


def test_max_tokens_ends_with_length(registry, engine):
    text, reason, tokens = engine.submit("adapter", registry.chat_prompt("adapter", PROMPT), _greedy(5)).result(60)
    assert (reason, tokens) == ("length", 5) and text


def test_seed_reproduces_a_sample_whatever_else_is_in_the_batch(registry, engine):
    ids = registry.chat_prompt("lora-b", PROMPT)
    sampling = Sampling(max_tokens=12, temperature=1.0, top_p=0.9, seed=123)
    alone = engine.submit("lora-b", ids, sampling).result(timeout=60)
    others = [engine.submit(n, registry.chat_prompt(n, PROMPT), Sampling(max_tokens=12, seed=i))
              for i, n in enumerate(("tiny-llama", "lora-a", "full"))]
    batched = engine.submit("lora-b", ids, sampling).result(timeout=60)
    for other in others:
        other.result(timeout=60)
    different = engine.submit("lora-b", ids, Sampling(max_tokens=12, temperature=1.0, top_p=0.9, seed=124)).result(60)
    assert alone == batched
    assert different[0] != alone[0]


def test_stream_chunks_concatenate_to_the_result(registry, engine):
    ids = registry.chat_prompt("lora-a", PROMPT)
    request = engine.submit("lora-a", ids, _greedy(12))

    async def collect():
        return [chunk async for chunk in request.stream()]

    chunks = asyncio.run(asyncio.wait_for(collect(), timeout=60))
    text, reason, tokens = request.result(timeout=1)
    assert "".join(c.text for c in chunks) == text
    assert [c.finish_reason for c in chunks][-1] == reason and all(c.finish_reason is None for c in chunks[:-1])
    assert sum(len(c.token_ids) for c in chunks) == tokens == 12
    assert len(chunks) > 1  # streamed, not one chunk at the end


def test_text_stream_holds_back_stop_prefixes_and_partial_characters(tiny_tokenizer):
    text = "héllo 😀 wonderful world"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_tokenizer, ["world"])
    pieces, stopped = [], False
    for token in ids:
        piece, stopped = stream.push(token)
        pieces.append(piece)
        assert "\ufffd" not in piece
        if stopped:
            break
    assert stopped and "".join(pieces) == "héllo 😀 wonderful "
    assert any(len(tiny_tokenizer.decode([t])) and "\ufffd" in tiny_tokenizer.decode([t]) for t in ids)  # emoji split
    plain = TextStream(tiny_tokenizer, [])
    assert "".join(plain.push(t)[0] for t in ids) + plain.finish() == text


def test_cancel_frees_the_slot(registry):
    with Engine(registry, max_batch_size=1) as engine:
        ids = registry.chat_prompt("lora-a", PROMPT)
        long = engine.submit("lora-a", ids, _greedy(500))
        waiting = engine.submit("lora-b", ids, _greedy(4))
        time.sleep(0.2)
        assert not waiting.done
        long.cancel()
        assert waiting.result(timeout=60)[1] == "length"
        assert long.result(timeout=10)[1] == "cancelled" and long.completion_tokens < 500


def test_runs_added_at_runtime_are_served_and_removed_ones_refused(runs):
    registry = Registry(base="tiny-llama")
    with Engine(registry) as engine:
        busy = engine.submit("tiny-llama", registry.chat_prompt("tiny-llama", PROMPT), _greedy(30))
        served = registry.add(runs["lora-b"], name="late")
        assert (served.id, served.method, served.base) == ("late", "lora", "tiny-llama")
        ids = registry.chat_prompt("late", PROMPT)
        assert engine.submit("late", ids, _greedy(8)).result(timeout=60)[0] is not None
        request = engine.submit("late", ids, _greedy(8))
        request.result(timeout=60)
        assert request.token_ids == _solo(runs["lora-b"], ids, 8)
        busy.result(timeout=60)
        doomed = engine.submit("late", ids, _greedy(300))
        registry.remove("late")
        with pytest.raises(TunelabError, match="removed"):
            doomed.result(timeout=60)
        with pytest.raises(UnknownModel, match="late"):
            engine.submit("late", ids, _greedy(4))


def test_bad_requests_fail_at_submit(registry, engine):
    ids = registry.chat_prompt("lora-a", PROMPT)
    with pytest.raises(UnknownModel, match="'nope'.*lora-a"):
        engine.submit("nope", ids, _greedy(4))
    with pytest.raises(TunelabError, match="context of 2048 tokens"):
        engine.submit("lora-a", ids, _greedy(2048))
    with pytest.raises(TunelabError, match="empty"):
        engine.submit("lora-a", [], _greedy(4))
    with pytest.raises(TunelabError, match="max_tokens"):
        engine.submit("lora-a", ids, _greedy(0))
    with pytest.raises(TunelabError, match="vocabulary"):
        engine.submit("lora-a", [10**9], _greedy(4))
    with pytest.raises(TunelabError, match="top_p"):
        engine.submit("lora-a", ids, Sampling(top_p=0))
