"""Encoding speed of the converted sentencepiece tokenizer against `sentencepiece` itself, in the same run.

All encode the bundled story corpus (English with some Chinese) line by line as one batch, on one thread:
sentencepiece's `encode(list)`, `bessemer.tokenizer.encode_texts` (what `prepare` and the chat templates use:
the WordCache, word by word through a cache) and the plain Rust `tokenizers` pipeline it replaces
(`encode_batch_fast`). Checks the ids are identical, then prints lines/s, tokens/s and the ratios.

    python benchmarks/tokenizer_speed.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings per side")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread for every side
    import sentencepiece as spm

    from bessemer.assets import CORPUS_DIR, demo_sentencepiece_model
    from bessemer.tokenizer import encode_texts, load_tokenizer

    rows = (CORPUS_DIR / "stories.jsonl").read_text("utf-8").splitlines()
    lines = [x for r in rows for x in json.loads(r)["text"].splitlines() if x.strip()]
    folder = Path(tempfile.mkdtemp())
    shutil.copy2(demo_sentencepiece_model(), folder / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = load_tokenizer(folder)
    shutil.rmtree(folder)

    def best(fn):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    backend = tok.backend_tokenizer

    encode_texts(tok, lines[:1])  # builds the WordCache (part of loading, like the tokenizer itself)
    words = tok.__dict__["_bessemer_word_cache"][1]

    def fresh_words():  # each timing starts with an empty word cache: every line's words are new to it
        words.ids.clear()
        return encode_texts(tok, lines)

    t_sp, ref = best(lambda: sp.encode(lines, num_threads=1))
    t_ours, ours = best(fresh_words)
    t_rust, rust = best(lambda: [e.ids for e in backend.encode_batch_fast(lines, add_special_tokens=False)])
    assert ours == ref == rust, "ids differ from sentencepiece"
    n_tokens = sum(map(len, ref))
    print(f"{len(lines)} lines, {n_tokens} tokens, ids identical; one thread each")
    for name, t in (("sentencepiece", t_sp), ("bessemer encode_texts", t_ours), ("tokenizers batch", t_rust)):
        print(f"{name:22} {len(lines) / t:10.0f} lines/s {n_tokens / t:12.0f} tokens/s {t_sp / t:6.2f}x")


if __name__ == "__main__":
    main()
