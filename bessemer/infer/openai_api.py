"""OpenAI's request and response bodies as pydantic models: field names, bounds and defaults in one place.

FastAPI validates requests against them (a bad field becomes a 400 naming it) and publishes them in the
server's OpenAPI schema. Fields this server cannot honour are declared and refused, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 16
MAX_SEED = (1 << 63) - 1
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

StopField = Annotated[
    str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None,
    Field(description=f"generation ends before any of these strings (up to {MAX_STOP_STRINGS})"),
]


class _Body(BaseModel):
    # strict: "0.5" is not a number and 1.0 is not an integer; unknown fields are ignored, as OpenAI does
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Fields both endpoints share."""

    model: str | None = Field(None, description="ignored: this server serves one model")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=1 << 30, description="extension; 0 or -1: off")
    repetition_penalty: float = Field(1.0, ge=1e-3, le=100.0, description="extension; 1: off")
    seed: int | None = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED)
    stop: StopField = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1: send one request per sample")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0: use repetition_penalty")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0: use repetition_penalty")
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = Field(False, description="extension: run to max_tokens (benchmarks)")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero(cls, v: float) -> float:
        if v != 0:
            raise ValueError("not supported; use repetition_penalty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("not supported by this server")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[int] | Annotated[list[str | list[int]], Field(min_length=1, max_length=1)] = Field(
        description="a string or a list of token ids (a batch of one is accepted)"
    )
    max_tokens: int | None = Field(None, ge=1, description=f"default {COMPLETIONS_DEFAULT_MAX_TOKENS}")
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None
    best_of: int = Field(1, ge=1, le=1)

    def prompt_value(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            return p[0]  # a batch of one
        return p


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: what the context and server allow")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    tools: None = None
    tool_choice: None = None
    functions: None = None
    response_format: None = None


# -- responses ------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bessemer"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
