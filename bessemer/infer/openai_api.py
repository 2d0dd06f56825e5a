"""OpenAI's request and response bodies as pydantic models: field names, bounds and defaults in one place.

FastAPI validates requests against them (a bad field becomes a 400 naming it) and publishes them in the
server's OpenAPI schema. Fields this server cannot honour are declared and refused, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512  # per stop string: text that may start one is held back and re-matched on every token
MAX_TOP_LOGPROBS = 20  # alternatives per token with logprobs / top_logprobs
MAX_CHOICES = 16  # n x prompts of one request; the server also holds it to its batch (serve --max-batch)
MAX_SEED = (1 << 63) - 1
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

UNSUPPORTED = {  # fields this server declares and refuses (a 400 naming them), with what to do instead
    "echo": "not supported by this server: the reply holds only the new text",
    "suffix": "not supported by this server (no fill-in-the-middle)",
    "best_of": "only 1 is supported; use n for several choices",
    "tools": "not supported by this server (no tool calls); leave it out",
    "tool_choice": "not supported by this server (no tool calls); leave it out or use 'none'",
    "functions": "not supported by this server (no function calls); leave it out",
    "response_format": "only {'type': 'text'} is supported (no JSON mode or schema)",
}

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
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt (at most the server's max_batch)")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0: use repetition_penalty")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0: use repetition_penalty")
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = Field(False, description="extension: run to max_tokens (benchmarks)")

    @field_validator("stream_options")
    @classmethod
    def _streaming_only(cls, v, info):
        if v is not None and not info.data.get("stream"):
            raise ValueError("only allowed with stream: true")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, v):
        if v is None:
            return v
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("give a string or a list of strings")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"{len(stops)} stop strings; the limit is {MAX_STOP_STRINGS}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"a stop string of {max(map(len, stops))} characters; the limit is {MAX_STOP_CHARS}"
            )
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero(cls, v: float) -> float:
        if v != 0:
            raise ValueError("not supported; use repetition_penalty (1.1 is a mild one)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("not supported by this server")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def _is_ids(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str | list[int]] = Field(
        description=f"a string, a list of token ids, or a batch of up to {MAX_CHOICES} of those"
    )
    max_tokens: int | None = Field(None, ge=1, description=f"default {COMPLETIONS_DEFAULT_MAX_TOKENS}")
    echo: Literal[False] = Field(False, description="not supported")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="each token's log-probability and this many top ones"
    )
    suffix: None = Field(None, description="not supported")
    best_of: int = Field(1, ge=1, le=1, description="only 1")

    @field_validator("echo", "suffix", "best_of", mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        if v not in (None, False) and not (info.field_name == "best_of" and v == 1):
            raise ValueError(UNSUPPORTED[info.field_name])
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v):
        if isinstance(v, str) or _is_ids(v):
            return v
        if not isinstance(v, list) or not v or not all(isinstance(p, str) or _is_ids(p) for p in v):
            raise ValueError("give a string, a list of token ids, or a list of those (a batch)")
        if len(v) > MAX_CHOICES:
            raise ValueError(f"a batch of {len(v)} prompts; the limit is {MAX_CHOICES}")
        return v

    def prompt_values(self) -> list[str | list[int]]:
        """The prompts of the request, one per choice group (a string or token ids is a batch of one)."""
        p = self.prompt
        return [p] if isinstance(p, str) or _is_ids(p) else list(p)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, v):
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError('give a string or a list of {"type": "text", "text": ...} parts')
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" and isinstance(kind, str):
                raise ValueError(f"part {i} is of type {kind!r}; this model reads only 'text' parts")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f'part {i}: give {{"type": "text", "text": "..."}}')
        return v

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ResponseFormat(_Body):
    type: Literal["text"] = Field(description="only 'text': JSON modes are not supported")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: what the context and server allow")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = Field(None, description="return each new token's log-probability")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="and this many most likely tokens (needs logprobs)"
    )
    tools: Annotated[list[dict], Field(max_length=0)] | None = Field(None, description="not supported")
    tool_choice: Literal["none"] | None = Field(None, description="not supported; only 'none'")
    functions: Annotated[list[dict], Field(max_length=0)] | None = Field(None, description="not supported")
    response_format: ResponseFormat | None = Field(None, description="only {'type': 'text'}")

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v, info):
        if v and not info.data.get("logprobs"):
            raise ValueError("set logprobs: true to get top_logprobs")
        return v

    @field_validator("tools", "tool_choice", "functions", mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        if v not in (None, False, [], "none"):
            raise ValueError(UNSUPPORTED[info.field_name])
        return v

    @field_validator("response_format", mode="before")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, dict) and v.get("type") != "text":
            raise ValueError(UNSUPPORTED["response_format"])
        return v


# -- responses ------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
