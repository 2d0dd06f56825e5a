"""Prompt / chat templates by name: one table shared by `prepare` (SFT data) and generate / chat / serve.

A conversation is a list of `{"role": "system" | "user" | "assistant", "content": str}`. `encode_chat` builds the
token ids piece by piece (fixed template text, user text, answer text, special token ids) and concatenates them,
so the loss mask is exact: 1 on each assistant answer and on the end-of-turn marker the model must learn to emit,
0 elsewhere. The same function builds generation prompts, so a prompt at inference is token for token the prefix
the model saw in training.

Text is text: message contents are encoded with `bessemer.tokenizer.encode_text`, so the characters of a special
token written in a message ("</s>", "[INST]", "<|im_end|>") stay characters; control ids come only from the
template itself.

Sentencepiece tokenizers (LLaMA, Mistral, Baichuan) add a "dummy prefix" space to every piece they encode. Pieces
are encoded the way the reference implementations see them: a piece that starts with one space lets the dummy
prefix stand for that space; a piece that continues text without a space, or starts with a newline, is encoded
without the dummy prefix; a piece right after a special token id (a new turn) keeps it, as the legacy LLaMA
tokenizer and the per-turn reference encoders do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bessemer.errors import ConfigError, DataError
from bessemer.tokenizer import chat_template_in, encode_text

log = logging.getLogger(__name__)

TEMPLATE_NAMES = ("alpaca", "vicuna", "llama2", "mistral", "baichuan2", "aquila", "chatml", "tokenizer")
ROLES = ("system", "user", "assistant")

ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
AQUILA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# Baichuan2 reserves two vocabulary entries as role markers (ids 195 and 196 in its 125,696-token vocabulary).
BAICHUAN2_USER = "<reserved_106>"
BAICHUAN2_ASSISTANT = "<reserved_107>"

_STOPS = {
    "alpaca": ["</s>", "### Instruction:"],
    "vicuna": ["</s>", "USER:"],
    "llama2": ["</s>", "[INST]"],
    "mistral": ["</s>", "[INST]"],
    "baichuan2": ["</s>", BAICHUAN2_USER],
    "aquila": ["###", "</s>", "[UNK]"],
    "chatml": ["<|im_end|>"],
    "tokenizer": [],
}

# First match wins, so "llama2..." is tried before "llama". LLaMA-1 base models have no chat format of their
# own; they are instruction-tuned on Alpaca rows, so that is their default (as `bessemer convert` records).
_FAMILY_TEMPLATES = {
    "llama2": "llama2",
    "vicuna": "vicuna",
    "mistral": "mistral",
    "baichuan2": "baichuan2",
    "aquila": "aquila",
    "llama": "alpaca",
}


@dataclass(frozen=True)
class _Piece:
    """Text to encode or a token id, and whether the loss is taken on it."""

    value: str | int
    learn: bool = False


def check_template(template: str) -> str:
    """Return `template` if it is a known name, else raise ConfigError listing the known ones."""
    if template not in TEMPLATE_NAMES:
        raise ConfigError(f"unknown template {template!r}; use one of: {', '.join(TEMPLATE_NAMES)}")
    return template


def default_template(model_family: str, tokenizer=None) -> str:
    """The tokenizer's own chat_template when it has one; else the template the family was tuned with; else alpaca.

    model_family: a family or preset name ("llama2-7b", "mistral") or a template name a converter chose.
    tokenizer: a loaded tokenizer or a tokenizer folder. A chat_template that ships with a model is the format
    its authors tuned it with; the family cannot tell a base model from a fine-tune (a LLaMA-architecture model
    tuned on ChatML), so the family table is only the fallback for tokenizers without one.
    """
    if isinstance(tokenizer, (str, Path)):
        own = chat_template_in(tokenizer)
    else:
        own = getattr(tokenizer, "chat_template", None)
    if own:
        _log_choice("tokenizer", "the tokenizer's own chat_template")
        return "tokenizer"
    name = family_template(model_family)
    _log_choice(name, f"the {model_family or 'default'} family's published format (the tokenizer has none)")
    return name


def family_template(model_family: str) -> str:
    """The template a model family was tuned with (a template name is returned as is); alpaca when unknown."""
    if model_family in TEMPLATE_NAMES:
        return model_family
    family = (model_family or "").lower().replace("-", "").replace("_", "")
    for prefix, name in _FAMILY_TEMPLATES.items():
        if family == prefix or (family.startswith(prefix) and not family[len(prefix) :].isalpha()):
            return name
    return "alpaca"


@cache
def _log_choice(name: str, why: str) -> None:
    log.info("chat template: %s (%s; --template NAME overrides)", name, why)


def stop_strings(template: str, tokenizer=None) -> list[str]:
    """Strings that end an assistant turn for `template` (generation also stops on the eos id)."""
    stops = list(_STOPS[check_template(template)])
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def encode_prompt(tokenizer, template: str, messages: list[dict]) -> list[int]:
    """Token ids of `messages` followed by the assistant header: what generation continues from."""
    if template == "tokenizer":  # no answer mask needed, so any chat_template the model ships will do
        return _encode_with_tokenizer_template(
            tokenizer, _checked(messages, template), True, need_mask=False
        )[0]
    return encode_chat(tokenizer, template, messages, add_generation_prompt=True)[0]


def encode_chat(
    tokenizer, template: str, messages: list[dict], *, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Encode a conversation; returns (ids, loss_mask) with 1 exactly on the assistant answers and their end marker."""
    check_template(template)
    messages = _checked(messages, template)
    if template == "tokenizer":
        return _encode_with_tokenizer_template(tokenizer, messages, add_generation_prompt)
    pieces = _BUILDERS[template](tokenizer, messages, add_generation_prompt)
    return _encode_pieces(tokenizer, pieces)


def _checked(messages: list[dict], template: str) -> list[dict]:
    """The messages as `template` renders them. The model's own template ("tokenizer") gets the contents as given,
    as transformers hands them over (a template that trims does so itself); the named templates strip them, as
    Meta's Llama-2 chat format does."""
    strip = template != "tokenizer"
    if not isinstance(messages, list) or not messages:
        raise DataError("a conversation must be a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i} must be a dict with 'role' and 'content'; got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"message {i} has role {role!r}; use one of: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise DataError(f"message {i} is a system message; only the first message may be one")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise DataError(f"message {i} content must be text; got {type(content).__name__}")
        out.append({"role": role, "content": content.strip() if strip else content})
    return out


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _special(tokenizer, text: str) -> str | int:
    """The id of `text` when the tokenizer has it as one vocabulary entry, else the text itself."""
    tid = tokenizer.convert_tokens_to_ids(text)
    if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == text:
        return tid
    return text


def _eos(tokenizer) -> str | int:
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return "</s>"


def _bos(tokenizer) -> list[_Piece]:
    return [_Piece(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []


def _answer(text: str, end: list[str | int], sep: str = " ") -> list[_Piece]:
    pieces = [_Piece(sep + text, learn=True)] if text else []
    return pieces + [_Piece(e, learn=True) for e in end]


def _alpaca(tok, messages, gen):
    # the response header ends each instruction, so a prompt ending in a user turn is ready for generation
    system, turns = _split_system(messages)
    pieces = [*_bos(tok), _Piece(system if system is not None else ALPACA_SYSTEM)]
    for m in turns:
        if m["role"] == "user":
            pieces.append(_Piece(f"\n\n### Instruction:\n{m['content']}\n\n### Response:\n"))
        else:
            pieces += _answer(m["content"], [_eos(tok)], sep="")
    return pieces


def _vicuna(tok, messages, gen):
    system, turns = _split_system(messages)
    pieces = [*_bos(tok), _Piece(system if system is not None else VICUNA_SYSTEM)]
    sep = " "  # FastChat v1.1: "{system} USER: ... ASSISTANT: ...</s>USER: ..."
    for m in turns:
        if m["role"] == "user":
            pieces.append(_Piece(f"{sep}USER: {m['content']} ASSISTANT:"))
        else:
            pieces += _answer(m["content"], [_eos(tok)])
        sep = "" if m["role"] == "assistant" else " "
    if gen and (not turns or turns[-1]["role"] == "assistant"):
        pieces.append(_Piece(f"{sep}ASSISTANT:"))
    return pieces


def _llama2(tok, messages, gen):
    system, turns = _split_system(messages)
    pieces = []
    first = True
    for m in turns:
        if m["role"] == "user":
            content = m["content"]
            if first and system:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            pieces += [*_bos(tok), _Piece(f"[INST] {content} [/INST]")]
            first = False
        else:
            pieces += _answer(m["content"], [_eos(tok)])
    if not pieces:
        pieces = _bos(tok)
    return pieces


def _mistral(tok, messages, gen):
    system, turns = _split_system(messages)
    pieces = [*_bos(tok)]
    first = True
    for m in turns:
        if m["role"] == "user":
            content = f"{system}\n\n{m['content']}" if first and system else m["content"]
            pieces.append(_Piece(f"[INST] {content} [/INST]"))
            first = False
        else:
            pieces += _answer(m["content"], [_eos(tok)])
    return pieces


def _baichuan2(tok, messages, gen):
    system, turns = _split_system(messages)
    user, assistant = _special(tok, BAICHUAN2_USER), _special(tok, BAICHUAN2_ASSISTANT)
    pieces = [_Piece(system)] if system else []
    for m in turns:
        if m["role"] == "user":
            pieces += [_Piece(user), _Piece(m["content"])]
        else:
            pieces += [_Piece(assistant), *_answer(m["content"], [_eos(tok)], sep="")]
    if gen:
        pieces.append(_Piece(assistant))
    return pieces


def _aquila(tok, messages, gen):
    system, turns = _split_system(messages)
    pieces = [_Piece((system if system is not None else AQUILA_SYSTEM) + "###")]
    for m in turns:
        if m["role"] == "user":
            pieces.append(_Piece(f"Human: {m['content']}###Assistant:"))
        else:
            pieces += _answer(m["content"], ["###"])
    if gen and (not turns or turns[-1]["role"] == "assistant"):
        pieces.append(_Piece("Assistant:"))
    return pieces


def _chatml(tok, messages, gen):
    start, end = _special(tok, "<|im_start|>"), _special(tok, "<|im_end|>")
    pieces = []
    for m in messages:
        pieces += [_Piece(start), _Piece(f"{m['role']}\n")]
        if m["role"] == "assistant":
            pieces += _answer(m["content"], [end], sep="")
        else:
            pieces += [_Piece(m["content"]), _Piece(end)]
        pieces.append(_Piece("\n"))
    if gen:
        pieces += [_Piece(start), _Piece("assistant\n")]
    return pieces


_BUILDERS = {
    "alpaca": _alpaca,
    "vicuna": _vicuna,
    "llama2": _llama2,
    "mistral": _mistral,
    "baichuan2": _baichuan2,
    "aquila": _aquila,
    "chatml": _chatml,
}


class _TextEncoder:
    """Encodes template pieces so that their concatenation matches a whole-string encoding at the joints."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        first = tokenizer.convert_ids_to_tokens(self.plain("a"))
        self.dummy_prefix = bool(first) and first[0] == "\u2581a"
        self.sentinel = None
        if self.dummy_prefix:
            for s in ("\n", "a", "."):
                ids = self.plain(s)
                if self.plain(s + "b")[: len(ids)] == ids:
                    self.sentinel = (s, len(ids))
                    break

    def plain(self, text: str) -> list[int]:
        return encode_text(self.tok, text)

    def encode(self, text: str, after_text: bool) -> list[int]:
        if not self.dummy_prefix:
            return self.plain(text)
        if text.startswith(" "):
            return self.plain(text[1:])
        if after_text or text[0].isspace():
            return self.bare(text)
        return self.plain(text)

    def bare(self, text: str) -> list[int]:
        """Encode without the dummy-prefix space (text continuing a word or following a newline)."""
        if self.sentinel is not None:
            s, n = self.sentinel
            ids = self.plain(s + text)
            if ids[:n] == self.plain(s):
                return ids[n:]
        return self.plain(text)


def _encode_pieces(tokenizer, pieces: list[_Piece]) -> tuple[list[int], list[int]]:
    enc = _TextEncoder(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    after_text = False
    for p in pieces:
        if isinstance(p.value, int):
            part = [p.value]
            after_text = False
        else:
            if not p.value:
                continue
            part = enc.encode(p.value, after_text)
            after_text = True
        ids += part
        mask += [int(p.learn)] * len(part)
    return ids, mask


def _encode_with_tokenizer_template(
    tokenizer, messages, gen, need_mask: bool = True
) -> tuple[list[int], list[int]]:
    """Render with the tokenizer's chat_template; ids equal `transformers`' apply_chat_template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "template 'tokenizer' needs a chat_template in tokenizer_config.json; "
            f"pick a named template instead: {', '.join(TEMPLATE_NAMES[:-1])}"
        )

    def render(msgs, add_gen):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_gen)
        except Exception as exc:  # the template's own raise_exception, or a Jinja error in it
            reason = (str(exc).strip().splitlines() or [""])[0]
            # a refusal by the template's raise_exception speaks for itself; anything else, say what broke
            if type(exc).__name__ != "TemplateError":
                reason = f"{type(exc).__name__}: {reason}"
            raise DataError(
                f"the tokenizer's chat_template refused the conversation ({reason}); "
                f"fix the messages or pick a named template: {', '.join(TEMPLATE_NAMES[:-1])}"
            ) from exc

    full = render(messages, gen)
    specials = _special_tokens(tokenizer)  # read once per conversation: transformers rebuilds it on each read
    markers = sorted(specials, key=len, reverse=True)  # longest first, where one is the start of another
    eos = getattr(tokenizer, "eos_token", None)
    if need_mask:
        full += _unrendered_end_marker(full, messages, gen, render, markers, eos)
    spans = _answer_spans(full, messages, render, markers, eos) if need_mask else []
    ids, offsets = _encode_rendered(tokenizer, full, specials, _content_spans(full, messages, specials))
    mask = [0] * len(ids)
    for k, (start, stop) in enumerate(offsets):
        if any(a <= start < b or (start == stop and a < start <= b) for a, b in spans):
            mask[k] = 1
    return ids, mask


def _unrendered_end_marker(
    full: str, messages: list[dict], gen: bool, render, markers: list[str], eos: str | None
) -> str:
    """The end-of-turn marker of a last answer that the template renders without one, else "".

    Some templates (Apertus, GLM-4, Hunyuan) render a conversation's last answer as a prompt to be continued,
    closing a turn only when another follows. Trained on that, a model never learns to end its answer, so the
    marker the template writes after the same answer when the conversation goes on is added (training only:
    these ids then extend transformers' rendering by that marker).
    """
    last, answer = messages[-1], _needle(messages[-1])
    if gen or last["role"] != "assistant" or not answer or not full.rstrip().endswith(answer):
        return ""
    try:
        more = render([*messages, {"role": "user", "content": "?"}], False)
    except DataError:
        return ""
    if not more.startswith(full):
        return ""
    return more[len(full) : _turn_end(more, len(full), len(full), markers, eos)]


def _needle(message: dict) -> str:
    """The text a message's content is found by in the rendered conversation: without the whitespace at its ends,
    which some templates trim (Llama-3's) and others keep (ChatML's)."""
    return message["content"].strip()


def _answer_spans(
    full: str, messages: list[dict], render, markers: list[str], eos: str | None
) -> list[tuple[int, int]]:
    """Character spans of `full` the model learns: each assistant turn and its end-of-turn marker.

    A turn starts where the generation prompt of the conversation before it ends, when the template renders
    that prompt unchanged in the whole conversation; else (a prompt that opens a reasoning block the answers do
    not show, say) at its answer, found in order. Where the template renders the turn itself as a prefix of the
    whole conversation, the turn is that text; else (templates that rewrite earlier answers) it is its answer.
    Either way it ends with its end-of-turn marker (_turn_end).
    """
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        content = _needle(m)
        if m["role"] != "assistant":
            # past each question, so an answer is never found inside one; a system message stays put, as some
            # templates move it into a later user turn
            at = full.find(content, cursor) if content and m["role"] == "user" else -1
            cursor = at + len(content) if at >= 0 else cursor
            continue
        through = render(messages[: i + 1], False)
        if i == 0:  # an opening answer (a greeting): templates render no empty conversation to start it after
            if not content or not full.startswith(through) or content not in through:
                raise ConfigError(
                    "message 0: the conversation opens with an answer the chat_template does not render as its "
                    "start; begin with a system or user message"
                )
            start = through.rfind(content)
            cursor = _turn_end(full, len(through), start + len(content), markers, eos)
            spans.append((start, cursor))
            continue
        before = render(messages[:i], True)
        opens = cursor <= len(before) and full.startswith(before)
        if opens and through.startswith(before) and full.startswith(through):
            start, stop = len(before), len(through)
        else:
            at = full.find(content, max(cursor, len(before) if opens else 0)) if content else -1
            if at < 0:
                raise ConfigError(
                    f"message {i}: the tokenizer's chat_template rewrites this answer (reasoning templates drop the "
                    "<think> part of earlier answers), so its loss mask cannot be located; end the conversation at "
                    f"that answer or pick a named template: {', '.join(TEMPLATE_NAMES[:-1])}"
                )
            lead = m["content"][: len(m["content"]) - len(m["content"].lstrip())]
            if lead and full.endswith(
                lead, 0, at
            ):  # the answer's own leading whitespace, where rendered, is learned
                at -= len(lead)
            start, stop = (len(before) if opens else at), at + len(lead) + len(content)
        answer_end = full.rfind(content, start, stop) + len(content) if content in full[start:stop] else start
        cursor = _turn_end(full, stop, answer_end, markers, eos)
        spans.append((start, cursor))
    return spans


def _turn_end(full: str, stop: int, answer_end: int, markers: list[str], eos: str | None) -> int:
    """Where a turn that the template renders up to `stop`, its answer up to `answer_end`, ends for the loss.

    A turn the template closes with a marker of its own ends there, without the whitespace after it (the newline
    after "<|im_end|>" is layout). A turn that ends with its answer takes the special tokens right after it in the
    conversation: through the eos token when it is among them ("<|END_TEXT|><|END_OF_TURN_TOKEN|>"), else the
    first ("<|user|>" for GLM, whose answers end where the next turn opens); with none, the text separator the
    template puts after answers ("\\n\\n") is the marker.
    """
    trimmed = len(full[:stop].rstrip())
    if trimmed > answer_end:
        return trimmed
    pos = answer_end
    while pos < len(full) and full[pos].isspace():
        pos += 1
    first = None
    while (token := next((s for s in markers if full.startswith(s, pos)), None)) is not None:
        pos += len(token)
        if token == eos:
            return pos
        first = first or pos
    return first or stop


def _special_tokens(tokenizer) -> dict:
    """{text: (id, AddedToken)} for the tokenizer's special added tokens."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {t.content: (i, t) for i, t in decoder.items() if getattr(t, "special", False) and t.content}


def _content_spans(full: str, messages: list[dict], specials: dict) -> list[tuple[int, int]]:
    """Where in the rendered text the contents that hold special-token text sit (those must stay text)."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        content = _needle(m)
        if not content:
            continue
        at = full.find(content, cursor)
        if at >= 0 and m["role"] != "system":  # some templates move the system message into a later turn
            cursor = at + len(content)
        if not any(s in content for s in specials):
            continue
        if at < 0:
            raise DataError(
                f"message {i} holds special-token text that the chat_template rewrites, so it cannot be kept "
                f"as text; remove it or pick a named template: {', '.join(TEMPLATE_NAMES[:-1])}"
            )
        spans.append((at, at + len(content)))
    return spans


def _encode_rendered(tokenizer, full: str, specials: dict, text_spans: list[tuple[int, int]]):
    """(ids, offsets) of a rendered conversation: the template's special tokens (`specials`, _special_tokens)
    become their ids, as `transformers` does, while special-token text inside `text_spans` (message contents)
    stays text."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    backend = tokenizer.backend_tokenizer
    pos = 0

    def add_text(stop: int) -> None:
        if stop <= pos:
            return
        with _text_mode(backend):
            enc = backend.encode(full[pos:stop], add_special_tokens=False)
        ids.extend(enc.ids)
        offsets.extend((a + pos, b + pos) for a, b in enc.offsets)

    if specials:
        pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
        for m in pattern.finditer(full):
            start, stop = m.span()
            if start < pos or any(a <= start < b for a, b in text_spans):
                continue
            tid, token = specials[m.group()]
            if token.lstrip:  # the token absorbs the whitespace before it, as tokenizers matches it
                while start > pos and full[start - 1].isspace():
                    start -= 1
            add_text(start)
            ids.append(tid)
            offsets.append(m.span())
            pos = stop
            if token.rstrip:
                while pos < len(full) and full[pos].isspace():
                    pos += 1
    add_text(len(full))
    return ids, offsets


class _text_mode:
    """Encode with the backend's special-token matching off, restoring the previous setting."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        self.before = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = True

    def __exit__(self, *exc):
        self.backend.encode_special_tokens = self.before
