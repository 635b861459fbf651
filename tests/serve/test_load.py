"""200 concurrent requests against a `tunelab serve` subprocess: none fails, and the server's memory
comes back near where it started.

RSS is read from /proc/PID/status (VmRSS) after a warm-up round (so one-off allocations -- the first
KV caches, tokenizer and torch thread pools, uvicorn's buffers -- are in the baseline) and again after
the 200. Tolerance: +25% of the warm baseline. glibc and torch's CPU allocator keep freed pages
mapped, so RSS after a burst sits above the baseline by roughly the burst's peak working set (200
parsed requests and 16 rows of tiny-llama KV cache: tens of MiB) without any leak; a per-request leak
of even ~1 MiB would show as +200 MiB and fail.
"""
from __future__ import annotations

import asyncio
import time

import httpx2 as httpx  # the HTTP client the openai package ships on
import pytest

from .conftest import ServeProcess

CONCURRENT = 200
MODELS = ["lora-a", "lora-b", "tiny-llama"]


async def _one(client, i: int) -> str:
    model = MODELS[i % len(MODELS)]
    if i % 4 == 0:  # a quarter streamed
        body = {"model": model, "messages": [{"role": "user", "content": f"Colour number {i}?"}],
                "max_tokens": 6, "stream": True}
        async with client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            lines = [line async for line in response.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        return "stream"
    if i % 4 == 1:
        response = await client.post("/completions", json={"model": model, "prompt": f"Item {i} is", "max_tokens": 6})
    else:
        response = await client.post("/chat/completions", json={"model": model, "max_tokens": 6, "messages": [
            {"role": "user", "content": f"What colour is thing {i}?"}]})
    response.raise_for_status()
    assert response.json()["usage"]["completion_tokens"] >= 1
    return "ok"


async def _burst(url: str, count: int) -> list:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        return await asyncio.gather(*(_one(client, i) for i in range(count)), return_exceptions=True)


@pytest.fixture
def serve_process(served_runs):
    process = ServeProcess(f"lora-a={served_runs['lora-a']}", f"lora-b={served_runs['lora-b']}", "--base", "tiny-llama",
                           "--max-context", "128", "--max-batch-size", "32")
    yield process
    process.close()


def test_200_concurrent_requests(serve_process):
    warm = asyncio.run(_burst(serve_process.url, 16))
    assert all(r in ("ok", "stream") for r in warm), warm
    before = serve_process.rss_kib()
    started = time.monotonic()
    results = asyncio.run(_burst(serve_process.url, CONCURRENT))
    elapsed = time.monotonic() - started
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {CONCURRENT} failed, first: {failed[0]!r}"
    time.sleep(1.0)
    after = serve_process.rss_kib()
    print(f"\nload: {CONCURRENT} requests in {elapsed:.1f} s, RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB")
    assert after <= before * 1.25, f"RSS grew from {before} KiB to {after} KiB (> +25%)"
