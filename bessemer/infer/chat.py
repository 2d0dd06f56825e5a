"""A chat conversation over a model: history, the prompt template, and streamed replies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from bessemer.errors import ConfigError
from bessemer.infer.generate import stop_token_ids, stream
from bessemer.infer.loading import InferenceModel
from bessemer.infer.sampling import SamplingParams


class ChatSession:
    """The messages so far; `send` adds a user turn and streams the assistant's reply into the history."""

    def __init__(self, loaded: InferenceModel, params: SamplingParams, system: str | None = None):
        from bessemer.templates import stop_strings

        self.loaded = loaded
        self.system = system
        stops = stop_strings(loaded.template, loaded.tokenizer)
        self.params = replace(
            params,
            stop=[*params.stop, *stops],
            stop_token_ids=[*params.stop_token_ids, *stop_token_ids(loaded.tokenizer, stops)],
        )
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self) -> list[int]:
        """The prompt for the next reply; the oldest turns are dropped when the context cannot hold them."""
        from bessemer.templates import encode_prompt

        limit = self.loaded.model.config.max_seq_len - self.params.max_new_tokens
        while True:
            ids = encode_prompt(self.loaded.tokenizer, self.loaded.template, self.messages)
            turns = [i for i, m in enumerate(self.messages) if m["role"] != "system"]
            if len(ids) <= limit:
                return ids
            if len(turns) <= 1:
                raise ConfigError(
                    f"message of {len(ids)} prompt tokens leaves no room for {self.params.max_new_tokens} new "
                    f"tokens in the model's context ({self.loaded.model.config.max_seq_len}); shorten it"
                )
            del self.messages[turns[0] : turns[0] + 2]  # the oldest user turn and its reply

    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is generated; the reply then joins the history."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self.prompt_ids()
        except Exception:
            self.messages.pop()
            raise
        reply = []
        try:
            for delta in stream(self.loaded.model, ids, self.params, self.loaded.tokenizer):
                reply.append(delta)
                yield delta
        finally:  # an interrupted reply stays in the history as far as it got
            self.messages.append({"role": "assistant", "content": "".join(reply)})
