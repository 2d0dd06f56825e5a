"""The one path from a prompt (or a conversation) and sampling parameters to something the decoder can run.

`generate`, `chat`, `serve` and `eval` (GSM8K, lm-eval's generate_until) all call `build_request`: it encodes
through the model's template, adds the template's stop strings and the stop ids they map to, and checks the
prompt and the new tokens against the context. A bad request raises `RequestError`, which names the field (the server's 400 `param`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bessemer.errors import BessemerError, ConfigError
from bessemer.infer.sampling import SamplingParams


class RequestError(ConfigError):
    """A request the model cannot run as asked; `param` names the field, `code` is OpenAI's error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


CONTEXT_EXCEEDED = "context_length_exceeded"


@dataclass
class GenerationRequest:
    """Prompt ids and the complete sampling parameters (stop strings and ids included) for one sequence."""

    prompt_ids: list[int]
    params: SamplingParams
    truncated: bool = False  # the prompt lost its first tokens to fit the context (build_request's truncate)


def stop_token_ids(tokenizer, stops: list[str] = ()) -> list[int]:
    """The eos id plus the ids of stop strings that are single special tokens (decoding hides those)."""
    ids = []
    if tokenizer is None:
        return ids
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    specials = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for s in stops:
        if s in specials:
            tid = tokenizer.convert_tokens_to_ids(s)
            if tid is not None and tid not in ids:
                ids.append(int(tid))
    return ids


def encode_input(tokenizer, template: str, prompt=None, messages: list[dict] | None = None) -> list[int]:
    """Token ids of a text prompt, a list of token ids, or a conversation (through `template`)."""
    if (prompt is None) == (messages is None):
        raise RequestError("give either a prompt or messages", param="prompt")
    if messages is not None:
        from bessemer.templates import encode_prompt

        try:
            return encode_prompt(tokenizer, template, messages)
        except BessemerError as exc:
            raise RequestError(str(exc), param="messages") from exc
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("prompt is empty; give at least one character", param="prompt")
        return tokenizer.encode(prompt)
    ids = list(prompt)
    if not ids:
        raise RequestError("prompt is empty; give at least one token id", param="prompt")
    vocab = len(tokenizer)
    if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab for t in ids):
        raise RequestError(f"prompt token ids must be integers in [0, {vocab})", param="prompt")
    return ids


def build_request(
    tokenizer,
    template: str | None,
    params: SamplingParams,
    *,
    context_len: int,
    prompt=None,
    messages: list[dict] | None = None,
    max_prompt_tokens: int | None = None,
    fit_max_new_tokens: bool = False,
    ignore_eos: bool = False,
    truncate: bool = False,
) -> GenerationRequest:
    """Encode the prompt or messages and complete `params` (stops), checking it all fits `context_len`.

    template: the chat template's name (only messages need one). A prompt is text or a list of token ids.
    fit_max_new_tokens: params.max_new_tokens is only a default; lower it to what the context leaves.
    ignore_eos: run to max_new_tokens whatever the model says (benchmarks).
    truncate: keep the last tokens of a prompt too long for the context beside max_new_tokens instead of
    refusing it (evaluation, as lm-eval's hf backend does).
    """
    ids = encode_input(tokenizer, template, prompt, messages)
    field = "messages" if messages is not None else "prompt"
    keep = context_len - params.max_new_tokens
    truncated = truncate and len(ids) > keep
    if truncated:
        if keep < 1:
            raise RequestError(
                f"max_new_tokens ({params.max_new_tokens}) leaves no room for a prompt in the context of "
                f"{context_len}; ask for fewer tokens",
                param="max_tokens",
                code=CONTEXT_EXCEEDED,
            )
        ids = ids[-keep:]
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise RequestError(
            f"prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}",
            param=field,
            code=CONTEXT_EXCEEDED,
        )
    room = context_len - len(ids)
    if room < 1:
        raise RequestError(
            f"prompt of {len(ids)} tokens fills the context of {context_len}; shorten it",
            param=field,
            code=CONTEXT_EXCEEDED,
        )
    max_new = min(params.max_new_tokens, room) if fit_max_new_tokens else params.max_new_tokens
    if max_new > room:
        raise RequestError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) exceeds the context of {context_len}; "
            "shorten the prompt or ask for fewer tokens",
            param="max_tokens",
            code=CONTEXT_EXCEEDED,
        )
    stops = list(params.stop)
    if messages is not None:
        from bessemer.templates import stop_strings

        stops += [s for s in stop_strings(template, tokenizer) if s not in stops]
    stop_ids = list(params.stop_token_ids)
    stop_ids += [i for i in stop_token_ids(tokenizer, stops) if i not in stop_ids]
    if ignore_eos:
        stop_ids = [i for i in stop_ids if i != tokenizer.eos_token_id]
    return GenerationRequest(
        ids, replace(params, max_new_tokens=max_new, stop=stops, stop_token_ids=stop_ids), truncated
    )
