"""Request and response bodies of the OpenAI-compatible routes (pydantic): the published OpenAPI schema.

Requests refuse unknown top-level fields (``extra="forbid"``), as OpenAI does, so a misspelt
parameter is a 400 naming it rather than silently ignored. Ranges follow OpenAI's documentation.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

Stop = Union[StrictStr, Annotated[list[StrictStr], Field(max_length=4)], None]


# StrictFloat takes JSON integers too (1 is a valid temperature), but not strings or booleans.


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: StrictBool | None = None


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _Sampled(_Request):
    """Fields chat and completions share."""

    model: StrictStr
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None  # accepted; only 0 is honoured
    frequency_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None  # accepted; only 0 is honoured
    user: StrictStr | None = None
    ignore_eos: StrictBool | None = None  # an extension (as in vLLM): generate max_tokens even past EOS

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        return [value] if isinstance(value, str) else value


class ChatCompletionRequest(_Sampled):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None


class CompletionRequest(_Sampled):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] \
        | Annotated[list[StrictInt], Field(min_length=1)] | Annotated[list[list[StrictInt]], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = 16  # OpenAI's default for completions
    echo: StrictBool | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    suffix: StrictStr | None = None


class ClassifyRequest(_Request):
    model: StrictStr
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]


class ScoreRequest(_Request):
    model: StrictStr
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
    response: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]


class AddModelRequest(_Request):
    path: StrictStr = Field(description="A finished run directory on the server's file system.")
    name: Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:/-]+$")] | None = None


# ---------------------------------------------------------------------------------------- responses


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    kind: str  # generate | classify | score
    base: str
    method: str | None = None
    context_length: int
    labels: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str  # "ok", or why not
    models: int  # models served


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Classification(BaseModel):
    index: int
    label: str
    probabilities: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Classification]
    model: str
    usage: Usage


class Score(BaseModel):
    index: int
    score: float


class ScoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Score]
    model: str
