"""WordCache's memory stays bounded however much text goes through it, with the ids of `tokenizers` itself."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bessemer.assets import demo_sentencepiece_model
from bessemer.tokenizer import WordCache, sentencepiece_to_tokenizers

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def texts_of_new_words(rng: random.Random, docs: int, words: int = 50) -> list[str]:
    """Documents of words that never repeat: 80 letters, or 60 Chinese characters (no spaces between)."""

    def word() -> str:
        if rng.random() < 0.5:
            return "".join(rng.choices(LETTERS, k=80))
        return "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(60))

    return [" ".join(word() for _ in range(words)) + " the cat sat." for _ in range(docs)]


def resident(process: psutil.Process) -> int:
    """Resident bytes, after glibc returned its free pages (what is left is held, not merely cached)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).malloc_trim(0)
    return process.memory_info().rss


@pytest.fixture(scope="module")
def backend():
    tk = sentencepiece_to_tokenizers(demo_sentencepiece_model(), "<s>")
    tk.encode_special_tokens = True
    return tk


def test_long_words_are_not_kept_and_generations_stay_bounded(backend, monkeypatch):
    monkeypatch.setattr(WordCache, "MAX_WORDS", 40)
    words = WordCache.for_backend(backend)
    rng = random.Random(0)
    short = [
        " ".join(rng.choices(["the", "cat", "sat", "on", "a", "mat", "dog", "ran"], k=8)) for _ in range(50)
    ]
    short += [f"word{i} number{i * 7}" for i in range(200)]  # more short words than MAX_WORDS
    texts = texts_of_new_words(rng, 20) + short
    rng.shuffle(texts)
    expected = [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
    for _ in range(2):  # the second pass moves words still in use back from the old generation
        calls = [texts[i : i + 5] for i in range(0, len(texts), 5)]
        largest = 0  # a generation holds at most MAX_WORDS words, or the words of the call that started it
        ours = []
        for call in calls:
            ours += words.encode(call, add_special_tokens=True)
            largest = max(largest, len({w for t in call for w in words.words(t)}))
            kept = [*words.ids, *words.old]
            assert kept and all(len(w) <= WordCache.MAX_WORD_CHARS for w in kept)
            assert max(len(words.ids), len(words.old)) <= WordCache.MAX_WORDS + largest
        assert ours == expected
    assert "\u2581the" in [*words.ids, *words.old]


# Measured in a fresh interpreter with one malloc arena: in a long pytest process other tests' threads and
# allocations, and glibc's per-thread arenas, move the resident set by several MB on their own (0.1-2 MB with
# the cache off, about 75 MB with it on).
MEASURE = """
import random, sys
import psutil
from bessemer.assets import demo_sentencepiece_model
from bessemer.tokenizer import WordCache, sentencepiece_to_tokenizers
from tests.tokenizer.test_word_cache import resident, texts_of_new_words

backend = sentencepiece_to_tokenizers(demo_sentencepiece_model(), "<s>")
backend.encode_special_tokens = True
words = WordCache.for_backend(backend)
rng = random.Random(1)
process = psutil.Process()
words.encode(texts_of_new_words(rng, 100))  # warm-up: thread pool, allocator arenas
before = resident(process)
for _ in range(4):  # 20,000 new words
    words.encode(texts_of_new_words(rng, 100))
print((resident(process) - before) / 2**20)
"""


def test_resident_memory_does_not_grow_with_new_words():
    # Every new word reaches the tokenizer's BPE model once. tokenizers 0.23 would keep each in a per-thread cache
    # (~32 bytes per byte of the word, up to 10,000 words per thread: ~40 MB per thread here); WordCache switches
    # that cache off (benchmarks/tokenizers_bpe_cache.py shows it standalone), and keeps no long word itself.
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    grown = float(out.stdout.split()[-1])
    assert grown < 8, f"resident memory grew {grown:.1f} MB over 20,000 new words"
