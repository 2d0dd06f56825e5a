"""A chat conversation over a model: history, the prompt template, and streamed replies."""

from __future__ import annotations

from collections.abc import Iterator

from bessemer.errors import ConfigError
from bessemer.infer.generate import stream
from bessemer.infer.loading import InferenceModel
from bessemer.infer.request import CONTEXT_EXCEEDED, GenerationRequest, RequestError, build_request
from bessemer.infer.sampling import SamplingParams


class ChatSession:
    """The messages so far; `send` adds a user turn and streams the assistant's reply into the history."""

    def __init__(
        self, loaded: InferenceModel, params: SamplingParams, system: str | None = None, compile: bool = False
    ):
        self.loaded, self.params, self.system, self.compile = loaded, params, system, compile
        self.messages: list[dict] = []
        self.dropped = 0  # earlier exchanges the last request left out (and forgot) to fit the context
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def request(self) -> GenerationRequest:
        """The request for the next reply; the oldest turns are dropped when the context cannot hold them
        (counted in `self.dropped`, so the user can be told)."""
        self.dropped = 0
        while True:
            try:
                return build_request(
                    self.loaded.tokenizer,
                    self.loaded.template,
                    self.params,
                    context_len=self.context_len,
                    messages=self.messages,
                )
            except RequestError as exc:
                turns = [i for i, m in enumerate(self.messages) if m["role"] != "system"]
                if exc.code != CONTEXT_EXCEEDED:
                    raise
                if len(turns) <= 1:
                    raise ConfigError(
                        f"{exc}; the message alone leaves no room for {self.params.max_new_tokens} new tokens"
                    ) from exc
                del self.messages[turns[0] : turns[0] + 2]  # the oldest user turn and its reply
                self.dropped += 1

    @property
    def context_len(self) -> int:
        return self.loaded.model.config.context_len

    def prepare(self, text: str) -> GenerationRequest:
        """Add a user message and build the request for the reply (the message is taken back if that fails)."""
        self.messages.append({"role": "user", "content": text})
        try:
            return self.request()
        except Exception:
            self.messages.pop()
            raise

    def reply(self, req: GenerationRequest) -> Iterator[str]:
        """Yield the reply to `req` as it is generated; the reply then joins the history."""
        reply = []
        try:
            for delta in stream(
                self.loaded.model, req.prompt_ids, req.params, self.loaded.tokenizer, self.compile
            ):
                reply.append(delta)
                yield delta
        finally:  # an interrupted reply stays in the history as far as it got
            self.messages.append({"role": "assistant", "content": "".join(reply)})

    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is generated; the reply then joins the history."""
        yield from self.reply(self.prepare(text))
