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
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def request(self) -> GenerationRequest:
        """The request for the next reply; the oldest turns are dropped when the context cannot hold them."""
        while True:
            try:
                return build_request(
                    self.loaded.tokenizer,
                    self.loaded.template,
                    self.params,
                    context_len=self.loaded.model.config.context_len,
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

    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is generated; the reply then joins the history."""
        self.messages.append({"role": "user", "content": text})
        try:
            req = self.request()
        except Exception:
            self.messages.pop()
            raise
        reply = []
        try:
            for delta in stream(
                self.loaded.model, req.prompt_ids, req.params, self.loaded.tokenizer, self.compile
            ):
                reply.append(delta)
                yield delta
        finally:  # an interrupted reply stays in the history as far as it got
            self.messages.append({"role": "assistant", "content": "".join(reply)})
