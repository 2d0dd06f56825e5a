"""Turn rows into token ids and loss masks: pretrain text, or SFT conversations through a chat template.

- pretrain: the text fields (default "text"; "a.b" is field b of a nested column a) joined by a blank line,
  encoded with the tokenizer's special tokens (a BOS for LLaMA-style tokenizers); no loss mask.
- alpaca: instruction, input (optional, appended to the instruction after a blank line), output; optional system
  and history (a list of [user, assistant] pairs before this exchange).
- sharegpt: conversations, a list of {"from": human|user|gpt|assistant|system, "value": text}; optional system.
  Answers before the first human turn are dropped, as FastChat's training does: ShareGPT splits long
  conversations, so a piece can open with the answer to a question it does not hold.
- messages: OpenAI style, a list of {"role": system|user|assistant, "content": text or a list of text parts}.
  Tool calls and tool turns are bad rows: the templates here do not render them.
SFT handlers learn every assistant turn (its answer and end marker); the rest of the conversation has mask 0.
A conversation without a non-empty answer is a bad row (it would teach nothing but the end marker).
"""

from __future__ import annotations

from dataclasses import dataclass

from bessemer.errors import DataError
from bessemer.templates import check_template, default_template, encode_chat

HANDLERS = ("pretrain", "alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
_SFT_COLUMNS = {
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "sharegpt": (("conversations",), ("system",)),
    "messages": (("messages",), ()),
}
TOOL_TURNS = ("tool", "function", "function_call", "observation")  # LLaMA-Factory's and others' tool turns


@dataclass
class Skip:
    """A row left out, with the reason counted in the report."""

    location: str
    reason: str
    detail: str = ""


class Handler:
    """Encodes rows for one handler; picklable, so each worker process builds its own copy."""

    def __init__(
        self,
        name: str,
        tokenizer,
        *,
        template: str | None = None,
        fields: tuple[str, ...] = ("text",),
        backend=None,
        text_encoder=None,
    ):
        """`backend`: a `tokenizers.Tokenizer` to encode pretrain text with when no transformers tokenizer is given;
        `text_encoder`: texts -> ids with special tokens added, used for pretrain text instead of either."""
        if name not in HANDLERS:
            raise DataError(f"handler {name!r} is unknown; use one of: {', '.join(HANDLERS)}")
        self.name = name
        self.tokenizer = tokenizer
        self.fields = tuple(fields) or ("text",)
        self.is_sft = name != "pretrain"
        self.backend = backend if backend is not None else getattr(tokenizer, "backend_tokenizer", None)
        self.text_encoder = text_encoder
        if template:
            check_template(template)
        if self.is_sft:
            self.template = template or default_template("", tokenizer)
        else:
            self.template = None  # pretrain text uses no template

    @property
    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) columns this handler reads: a "a.b" field needs column a (or one named "a.b")."""
        if self.name == "pretrain":
            return tuple(f.split(".")[0] for f in self.fields), tuple(f for f in self.fields if "." in f)
        return _SFT_COLUMNS[self.name]

    def encode(self, rows: list[tuple[str, dict]], *, skip_bad: bool = False) -> list[tuple | Skip]:
        """(ids, mask or None) for each row, or a Skip; bad rows raise DataError unless `skip_bad`."""
        if self.is_sft:
            return [self._guard(loc, skip_bad, self._encode_sft, row) for loc, row in rows]
        texts = [self._guard(loc, skip_bad, self._text, row) for loc, row in rows]
        todo = [t for t in texts if isinstance(t, str) and t]
        enc = iter(self._encode_texts(todo))
        out: list[tuple | Skip] = []
        for (loc, _), t in zip(rows, texts):
            if isinstance(t, Skip):
                out.append(t)
            elif not t:
                out.append(Skip(loc, "empty text"))
            else:
                out.append((next(enc), None))
        return out

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        # the Rust tokenizer directly: the same ids as the transformers wrapper, without its import in workers
        if not texts:
            return []
        if self.text_encoder is not None:
            return self.text_encoder(texts)
        if self.backend is not None:
            # encode_batch_fast skips character offsets, which we never use (tokenizers >= 0.21)
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=True)]
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]

    def _guard(self, loc, skip_bad, fn, row):
        try:
            return fn(row)
        except DataError as exc:
            reason, _, detail = str(exc).partition(": ")
            if not skip_bad:
                fix = "" if "; " in str(exc) else "; fix the row or pass --skip-bad"
                raise DataError(f"{loc}: {exc}{fix}") from None
            return Skip(loc, reason, detail)

    def _text(self, row: dict) -> str:
        parts = []
        for f in self.fields:
            parts.append(_text(_field(row, f), f"column {f!r}"))
        # empty fields are left out; whitespace is text like any other (Megatron encodes it too)
        return "\n\n".join(p for p in parts if p)

    def _encode_sft(self, row: dict):
        messages = getattr(self, f"_{self.name}")(row)
        try:
            ids, mask = encode_chat(self.tokenizer, self.template, messages)
        except DataError as exc:
            raise DataError(f"bad conversation: {exc}") from None
        # an empty answer still learns its end marker: a row of only such answers would teach silence
        if not any(mask) or not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DataError("no answer tokens: the conversation has no non-empty assistant turn")
        return ids, mask

    def _alpaca(self, row: dict) -> list[dict]:
        for key in ("instruction", "output"):
            if key not in row:
                raise DataError(
                    f"missing column {key!r}: the row has {_columns(row)}; alpaca rows need instruction, output"
                )
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": _text(row["system"], "system")})
        for k, pair in enumerate(row.get("history") or []):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise DataError(f"bad history: entry {k} must be a [user, assistant] pair")
            messages += [
                {"role": "user", "content": _text(pair[0], "history")},
                {"role": "assistant", "content": _text(pair[1], "history")},
            ]
        prompt = _text(row["instruction"], "instruction")
        extra = _text(row.get("input"), "input")
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}" if prompt.strip() else extra
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row["output"], "output")},
        ]
        return messages

    def _sharegpt(self, row: dict) -> list[dict]:
        if "conversations" not in row:
            raise DataError(
                f"missing column 'conversations': the row has {_columns(row)}; sharegpt rows need it"
            )
        turns = row["conversations"]
        if not isinstance(turns, list):
            raise DataError("bad conversations: must be a list of {from, value}")
        if not turns:
            raise DataError(
                "empty conversation: 'conversations' holds no turns; remove the row or pass --skip-bad"
            )
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": _text(row["system"], "system")})
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise DataError(f"bad conversations: turn {k} must be a dict with 'from' and 'value'")
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if str(turn["from"]).lower() in TOOL_TURNS:
                raise DataError(
                    f"bad conversations: turn {k} is a tool turn ({turn['from']!r}), which the chat templates "
                    "here do not render; remove the row or pass --skip-bad"
                )
            if role is None:
                raise DataError(
                    f"bad conversations: turn {k} is from {_short(turn['from'])}; use human, gpt or system"
                )
            messages.append({"role": role, "content": _text(turn["value"], "value")})
        first = 1 if messages and messages[0]["role"] == "system" else 0
        while first < len(messages) and messages[first]["role"] == "assistant":
            del messages[first]
        if len(messages) == first:
            raise DataError("no answer tokens: the conversation has no turn after its leading answers")
        return messages

    def _messages(self, row: dict) -> list[dict]:
        if "messages" not in row:
            raise DataError(f"missing column 'messages': the row has {_columns(row)}; messages rows need it")
        turns = row["messages"]
        if not isinstance(turns, list):
            raise DataError("bad messages: must be a list of {role, content}")
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise DataError(f"bad messages: message {k} must be a dict with 'role' and 'content'")
            if turn.get("tool_calls") or turn.get("function_call"):
                # dropped, the answer would teach the model to say nothing where it called a tool
                raise DataError(
                    f"bad messages: message {k} calls tools, which the chat templates here do not render; "
                    "remove the row or pass --skip-bad"
                )
        return [{"role": t["role"], "content": _content(t["content"], k)} for k, t in enumerate(turns)]


def _field(row: dict, name: str):
    """The value of column `name`; "a.b" names field b of a nested column a (a parquet struct, a JSON object)
    when the row has no column "a.b" itself."""
    if name in row:
        return row[name]
    value = row
    for key in name.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DataError(
                f"missing column {name!r}: the row has {_columns(row)}; choose them with --fields"
            )
        value = value[key]
    return value


def _columns(row: dict) -> str:
    return ", ".join(repr(k) for k in row) or "no columns"


def _text(value, key: str) -> str:
    """A text field as given: None is empty; anything but a string, or a string that is not valid Unicode, is bad."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"bad {key}: must be text (a string), not {_json_kind(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"bad {key}: not valid Unicode (a lone surrogate {value[exc.start]!r} at character {exc.start})"
            ) from None
    return value


def _content(value, k: int) -> str:
    """A message's content: text, or a list of OpenAI-style text parts, concatenated as chat templates render
    them ({"type": "text", "text": ...}; any other part is a bad row)."""
    if not isinstance(value, list):
        return _text(value, "content")
    texts = []
    for part in value:
        if not isinstance(part, dict) or part.get("type") != "text" or "text" not in part:
            kind = part.get("type") if isinstance(part, dict) else _json_kind(part)
            raise DataError(
                f"bad content: message {k} holds a {kind!r} part; only text parts can be trained; "
                "remove the row or pass --skip-bad"
            )
        texts.append(_text(part["text"], "content"))
    return "".join(texts)


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
