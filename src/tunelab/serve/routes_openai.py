"""OpenAI's models, chat completions and completions routes over the registry and the batching engine.

Thin: a route checks what only HTTP knows (which kind of model, the context budget, unsupported
options), turns the body into prompt ids and ``Sampling``, submits ``n`` requests per prompt so
they batch, and formats what the engine streams back -- as one JSON body or as server-sent events
in OpenAI's chunk format.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from .errors import APIError
from .schemas import (ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessage, Completion,
                      CompletionChoice, CompletionRequest, ModelCard, ModelList, Usage)

GENERATE = "generate"
ANSWERS = {"generate": "/v1/chat/completions and /v1/completions", "classify": "/v1/classify", "score": "/v1/score"}


def model_card(served) -> ModelCard:
    return ModelCard(id=served.id, created=served.created, kind=served.kind, base=served.base, method=served.method,
                     context_length=served.context_length, labels=served.labels)


def served_as(state, model: str, kind: str):
    """The served model, which must be of ``kind``: else a 400 naming what it is and where it answers."""
    served = state.registry.get(model)  # UnknownModel -> 404 model_not_found
    if served.kind != kind:
        raise APIError(400, f"model '{model}' is a {served.kind} model; it answers {ANSWERS[served.kind]}, "
                            f"not this route", param="model", code="wrong_model_kind")
    return served


def router(state):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool

    api = APIRouter(tags=["openai"])

    @api.get("/v1/models", response_model=ModelList)
    def list_models() -> ModelList:
        return ModelList(data=[model_card(m) for m in state.registry.models()])

    @api.get("/v1/models/{model_id:path}", response_model=ModelCard)
    def get_model(model_id: str) -> ModelCard:
        return model_card(state.registry.get(model_id))

    @api.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def chat_completions(body: ChatCompletionRequest):
        served = served_as(state, body.model, GENERATE)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if body.max_tokens is not None and body.max_completion_tokens is not None \
                and body.max_tokens != body.max_completion_tokens:
            raise APIError(400, "give max_tokens or max_completion_tokens, not two different values",
                           param="max_completion_tokens")
        max_tokens = body.max_completion_tokens or body.max_tokens
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt = await run_in_threadpool(state.registry.chat_prompt, body.model, messages, max_tokens or 256)
        requests = _submit(state, served, body, [prompt], max_tokens, "messages")
        kind = ChatKind()
        if body.stream:
            return _sse(_stream(kind, body, requests, [len(prompt)], echo=None))
        texts, reasons = await _collect(requests)
        return ChatCompletion(id=kind.new_id(), created=int(time.time()), model=body.model,
                              choices=[ChatChoice(index=i, message=ChatMessage(content=t), finish_reason=r)
                                       for i, (t, r) in enumerate(zip(texts, reasons))],
                              usage=_usage([len(prompt)], requests))

    @api.post("/v1/completions", response_model=Completion, responses={200: {"content": {"text/event-stream": {}}}})
    async def completions(body: CompletionRequest):
        served = served_as(state, body.model, GENERATE)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if body.suffix:
            raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
        prompts = await run_in_threadpool(_prompt_ids, state.registry, body.model, body.prompt)
        requests = _submit(state, served, body, prompts, body.max_tokens, "prompt")
        echo = None
        if body.echo:
            texts = await run_in_threadpool(lambda: [state.registry.decode(body.model, p) for p in prompts])
            echo = [texts[i // (body.n or 1)] for i in range(len(requests))]
        kind = CompletionKind()
        if body.stream:
            return _sse(_stream(kind, body, requests, [len(p) for p in prompts], echo=echo))
        texts, reasons = await _collect(requests)
        if echo:
            texts = [e + t for e, t in zip(echo, texts)]
        return Completion(id=kind.new_id(), created=int(time.time()), model=body.model,
                          choices=[CompletionChoice(index=i, text=t, finish_reason=r)
                                   for i, (t, r) in enumerate(zip(texts, reasons))],
                          usage=_usage([len(p) for p in prompts], requests))

    return api


# ---------------------------------------------------------------------------------------- submitting


def _prompt_ids(registry, model: str, prompt) -> list[list[int]]:
    """A completions ``prompt`` (text, texts, token ids, lists of token ids) as lists of token ids."""
    if isinstance(prompt, str):
        return [registry.encode(model, prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [registry.encode(model, p) for p in prompt]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _submit(state, served, body, prompts: list[list[int]], max_tokens: int | None, prompt_param: str) -> list:
    """``n`` engine requests per prompt (seeds seed, seed+1, ... so choices differ), after the budget checks."""
    from .request import Sampling

    n = body.n or 1
    if n * len(prompts) > state.max_n:
        raise APIError(400, f"this server gives at most {state.max_n} choices per request (n x prompts); "
                            f"asked for {n * len(prompts)}", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError(400, f"{name} is not supported by this server (only 0)", param=name)
    context = state.context_length(served)
    budgets = []
    for index, ids in enumerate(prompts):
        where = prompt_param if len(prompts) == 1 else f"{prompt_param}[{index}]"
        if not ids:
            raise APIError(400, "The prompt is empty: it has no tokens", param=where)
        if len(ids) >= context:
            raise APIError(400, f"This model's maximum context length is {context} tokens, but the prompt has "
                                f"{len(ids)} tokens", param=where, code="context_length_exceeded")
        if max_tokens is not None and len(ids) + max_tokens > context:
            raise APIError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                                f"{len(ids)} tokens and max_tokens asks for {max_tokens} more "
                                f"({len(ids) + max_tokens} in all)", param="max_tokens", code="context_length_exceeded")
        budgets.append(max_tokens if max_tokens is not None else context - len(ids))
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    top_p = 1.0 if body.top_p is None else float(body.top_p)
    if top_p == 0:  # the nucleus of mass 0 is the single likeliest token: greedy
        temperature, top_p = 0.0, 1.0
    requests = []
    try:
        for ids, budget in zip(prompts, budgets):
            for j in range(n):
                seed = None if body.seed is None else body.seed + j
                sampling = Sampling(max_tokens=budget, temperature=temperature, top_p=top_p,
                                    stop=list(body.stop or []), seed=seed, ignore_eos=bool(body.ignore_eos))
                requests.append(state.engine.submit(body.model, ids, sampling))
    except BaseException:
        for request in requests:
            request.cancel()
        raise
    return requests


async def _collect(requests) -> tuple[list[str], list[str | None]]:
    """Each request's whole text and finish reason, without blocking the event loop."""

    async def one(request):
        text, reason = [], None
        async for chunk in request.stream():
            text.append(chunk.text)
            reason = chunk.finish_reason or reason
        return "".join(text), reason

    try:
        results = await asyncio.gather(*(one(r) for r in requests))
    finally:  # a failed or cancelled sibling: free the others' batch slots
        for request in requests:
            request.cancel()
    return [t for t, _ in results], [r for _, r in results]


def _usage(prompt_lengths: list[int], requests) -> Usage:
    prompt, completion = sum(prompt_lengths), sum(r.completion_tokens for r in requests)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# ---------------------------------------------------------------------------------------- streaming


class ChatKind:
    """How chat chunks look: ``delta`` objects, the first carrying the role."""

    object = "chat.completion.chunk"

    @staticmethod
    def new_id() -> str:
        return f"chatcmpl-{uuid.uuid4().hex[:24]}"

    @staticmethod
    def opening(index: int, echo: str | None) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    @staticmethod
    def piece(index: int, text: str, reason: str | None) -> dict:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": reason}


class CompletionKind:
    object = "text_completion"

    @staticmethod
    def new_id() -> str:
        return f"cmpl-{uuid.uuid4().hex[:24]}"

    @staticmethod
    def opening(index: int, echo: str | None) -> dict | None:
        return None if echo is None else CompletionKind.piece(index, echo, None)

    @staticmethod
    def piece(index: int, text: str, reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def _sse(events):
    from fastapi.responses import StreamingResponse

    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(kind, body, requests, prompt_lengths: list[int], echo: list[str] | None):
    """Server-sent events: the chunks of all ``requests`` (choice i = request i) as they come, then
    a usage chunk when ``stream_options.include_usage``, then ``[DONE]``. A client that goes away
    cancels the generator here, which frees the requests' batch slots."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {"id": kind.new_id(), "object": kind.object, "created": int(time.time()), "model": body.model}

    def chunk(choices: list[dict]) -> str:
        return _event({**head, "choices": choices, **({"usage": None} if include_usage else {})})

    inbox: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(index: int, request) -> None:
        try:
            async for piece in request.stream():
                await inbox.put((index, piece))
            await inbox.put((index, end))
        except Exception as exc:  # the engine failed this request: tell the client in the stream
            await inbox.put((index, exc))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        openings = [o for i in range(len(requests)) if (o := kind.opening(i, echo[i] if echo else None))]
        if openings:
            yield chunk(openings)
        running = len(requests)
        while running:
            index, item = await inbox.get()
            if item is end:
                running -= 1
            elif isinstance(item, Exception):
                from ..core.errors import TunelabError

                status = 400 if isinstance(item, TunelabError) else 500
                error = APIError(status, str(item) or type(item).__name__,
                                 type="invalid_request_error" if status == 400 else "server_error")
                yield _event(error.body())
                return
            elif item.finish_reason == "cancelled":  # only after cancel(); its end marker follows
                continue
            elif item.text or item.finish_reason:
                yield chunk([kind.piece(index, item.text, item.finish_reason)])
        if include_usage:
            yield _event({**head, "choices": [], "usage": _usage(prompt_lengths, requests).model_dump()})
        yield _event("[DONE]")
    finally:
        for request in requests:
            request.cancel()
        for task in tasks:
            task.cancel()
