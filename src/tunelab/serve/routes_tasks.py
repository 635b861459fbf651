"""Task routes: ``POST /v1/classify`` for classification runs, ``POST /v1/score`` for reward runs.

Both call the registry, which runs the same classifier/scorer as ``tunelab eval`` / ``tunelab score``.
"""
from __future__ import annotations

from .errors import APIError
from .routes_openai import served_as
from .schemas import Classification, ClassificationList, ClassifyRequest, Score, ScoreList, ScoreRequest, Usage


def router(state):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool

    api = APIRouter(tags=["tasks"])

    @api.post("/v1/classify", response_model=ClassificationList)
    async def classify(body: ClassifyRequest) -> ClassificationList:
        served_as(state, body.model, "classify")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)

        def run():
            lengths = [len(state.registry.encode(body.model, t)) for t in texts]
            if 0 in lengths:  # nothing for the classifier to read
                where = "input" if isinstance(body.input, str) else f"input[{lengths.index(0)}]"
                raise APIError(400, "The input text is empty: it has no tokens", param=where)
            return state.registry.classify(body.model, texts), sum(lengths)

        rows, tokens = await run_in_threadpool(run)
        return ClassificationList(data=[Classification(index=i, label=row["label"], probabilities=row["probabilities"])
                                        for i, row in enumerate(rows)],
                                  model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))

    @api.post("/v1/score", response_model=ScoreList)
    async def score(body: ScoreRequest) -> ScoreList:
        served_as(state, body.model, "score")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        responses = [body.response] if isinstance(body.response, str) else list(body.response)
        if len(prompts) == 1 and len(responses) > 1:  # one prompt, several candidate responses
            prompts = prompts * len(responses)
        if len(prompts) != len(responses):
            raise APIError(400, f"{len(prompts)} prompts but {len(responses)} responses: give one prompt per "
                                "response (or one prompt for all)", param="response")
        rewards = await run_in_threadpool(state.registry.score, body.model, prompts, responses)
        return ScoreList(data=[Score(index=i, score=float(r)) for i, r in enumerate(rewards)], model=body.model)

    return api
