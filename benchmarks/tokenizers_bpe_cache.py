"""Minimal reproduction, for an upstream report: tokenizers' BPE word cache is never freed (tokenizers 0.23).

Since tokenizers 0.23 a BPE model caches words per rayon thread (a thread-local map keyed by the model's cache
id). `model._clear_cache()` only gives the model a new id, and a dropped `Tokenizer` leaves its entries behind,
so the words stay in every thread's map for the life of the process. Encoding words that do not repeat, with a
fresh tokenizer (or after `_clear_cache()`) each round, grows the resident memory by the same amount every round;
with one tokenizer kept (or the cache off: `model._resize_cache(0)`) it stays flat. Each entry also keeps
about 32 bytes per byte of the word (its symbols). bessemer.tokenizer.WordCache switches that cache off for the
copy of the tokenizer it encodes words with (each word reaches it once there).

    python benchmarks/tokenizers_bpe_cache.py   # about 15 seconds; no Bessemer code
"""

from __future__ import annotations

import os
import random

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers

ROUNDS = 20
CHECK = 5  # by then the 10,000 words per thread a kept cache may hold are there
LETTERS = "abcdefghij"


def make_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(LETTERS)}, []))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(mode: str) -> tuple[float, float]:
    """RSS after round CHECK and after the last round; each round encodes 5,000 new 40-letter words."""
    rng = random.Random(0)
    tok = make_tokenizer()
    if mode == "cache off":
        tok.model._resize_cache(0)
    first = 0.0
    for r in range(ROUNDS):
        if mode == "clear_cache each round":
            tok.model._clear_cache()
        elif mode == "new tokenizer each round":
            tok = make_tokenizer()
        texts = [" ".join("".join(rng.choices(LETTERS, k=40)) for _ in range(50)) for _ in range(100)]
        tok.encode_batch_fast(texts)
        if r + 1 == CHECK:
            first = rss_mb()
    return first, rss_mb()


def main() -> None:
    print(f"tokenizers {tokenizers.__version__}, {ROUNDS} rounds of 5,000 new words")
    for mode in ("one tokenizer", "cache off", "clear_cache each round", "new tokenizer each round"):
        first, last = run(mode)
        print(f"{mode:26} RSS {first:6.0f} MB after round {CHECK}, {last:6.0f} MB after round {ROUNDS}")


if __name__ == "__main__":
    main()
