"""Turning a growing list of token ids into text deltas: never half a character, never part of a stop string."""

from __future__ import annotations

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4  # prompt tokens decoded before the first new one, so its leading space survives


class IncrementalDetokenizer:
    """Decode ids one at a time, emitting text only once it is complete.

    A byte-fallback tokenizer spells a character outside its vocabulary as several byte tokens (a Chinese
    character is three); until the last arrives the decoded text ends in U+FFFD, and nothing is emitted.
    Each step decodes a short window (from the start of the last emitted piece) rather than the whole
    sequence, and the window's text is compared with what it decoded to before, so tokenizers that strip
    a leading space from the first token of a decode still give the right spacing.
    """

    def __init__(self, tokenizer, prompt_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        self.ids = list((prompt_ids or [])[-CONTEXT_TOKENS:])
        self.prefix_offset = 0  # start of the window
        self.read_offset = len(self.ids)  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one id; return the newly complete text (often "")."""
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the sequence (an unfinished character shows as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(before) :]


class StopMatcher:
    """Hold back text that might be the start of a stop string; cut the output where one appears."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed new text; return what may be shown now. After a stop string, `stopped` is True."""
        if self.stopped:
            return ""
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut]
        keep = 0  # the longest tail of buf that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation the held text was not a stop string after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
