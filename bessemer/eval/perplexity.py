"""Perplexity of a text file or a prepared dataset (PREFIX.bin/.idx) with a sliding window.

Each step predicts the next `stride` tokens from an input of at most `window` tokens ending just before the last
of them, so every token after the first is predicted once, with at least `window - stride + 1` tokens of context
once the text is that long (stride == window: lm-eval's rolling windows; smaller strides: more context, more
compute).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bessemer.errors import ConfigError, DataError
from bessemer.models import Transformer


@dataclass
class Perplexity:
    tokens: int  # tokens predicted
    nll: float  # mean negative log-likelihood per predicted token (nats)
    bytes: int  # UTF-8 bytes of the text the tokens cover
    words: int = 0  # whitespace-separated words of that text, counted as lm-eval's wikitext task counts them

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def word_perplexity(self) -> float:
        """lm-eval's word_perplexity: exp(total NLL / words)."""
        return math.exp(self.nll * self.tokens / self.words) if self.words else float("nan")

    @property
    def byte_perplexity(self) -> float:
        """lm-eval's byte_perplexity: exp(total NLL / bytes)."""
        return math.exp(self.nll * self.tokens / self.bytes) if self.bytes else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll * self.tokens / (math.log(2) * self.bytes) if self.bytes else float("nan")


def count_words(text: str) -> int:
    """Words as lm-eval's wikitext task counts them (re.split on whitespace runs, ends included)."""
    return len(re.split(r"\s+", text))


def read_tokens(source: str | Path, tokenizer) -> tuple[list[int], int, int]:
    """Token ids, UTF-8 byte count and word count of a .txt file (encoded whole) or a prepared PREFIX.

    The ids start with the tokenizer's BOS (else EOS) token, added when the text's own ids do not, so every token
    of the text is predicted and bits per byte covers every byte (lm-eval's rolling log-likelihood does the same).
    """
    from bessemer.data import indexed

    path = Path(source)
    if indexed.exists(path):
        ids = indexed.IndexedDataset(path).tokens.tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return _with_prefix_token(ids, tokenizer), len(text.encode("utf-8")), count_words(text)
    if not path.is_file():
        raise DataError(f"{path}: neither a text file nor a prepared PREFIX (.bin/.idx); check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8"
        ) from exc
    ids = _with_prefix_token(tokenizer(text)["input_ids"], tokenizer)
    return ids, len(text.encode("utf-8")), count_words(text)


def _with_prefix_token(ids: list[int], tokenizer) -> list[int]:
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [prefix, *ids] if prefix is not None and ids[:1] != [prefix] else ids


@torch.no_grad()
def perplexity(
    model: Transformer, ids: list[int], n_bytes: int, window: int, stride: int, n_words: int = 0
) -> Perplexity:
    """Mean NLL over ids[1:], each token predicted once from up to window-1 tokens of context."""
    if not 0 < stride <= window:
        raise ConfigError(f"--stride {stride}: use 1 to the window length ({window})")
    if window > model.config.max_seq_len:
        raise ConfigError(f"--window {window} exceeds the model's max_seq_len {model.config.max_seq_len}")
    if len(ids) < 2:
        raise DataError("the text has fewer than 2 tokens; perplexity needs at least 2")
    device = next(model.parameters()).device
    total, count, scored = 0.0, 0, 1  # targets [1, scored) are done; token 0 has no context
    while scored < len(ids):
        end = min(scored + stride, len(ids))
        begin = max(0, end - 1 - window)  # the input ids[begin:end-1] predicts ids[begin+1:end]
        chunk = torch.tensor([ids[begin:end]], device=device)
        logp = torch.log_softmax(model(chunk[:, :-1])[0].float(), -1)
        nll = -logp.gather(1, chunk[0, 1:, None])[:, 0]
        new = nll[scored - begin - 1 :]  # only the targets no earlier window scored
        total += float(new.double().sum())
        count += new.numel()
        scored = end
    return Perplexity(count, total / count, n_bytes, n_words)
