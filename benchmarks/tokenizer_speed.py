"""Encoding speed of the converted sentencepiece tokenizer against `sentencepiece` itself, in the same run.

Both encode the bundled story corpus (English with some Chinese) line by line as one batch: sentencepiece's
`encode(list)` and `bessemer.tokenizer.encode_texts` (the Rust `tokenizers` backend `prepare` uses). Checks the
ids are identical, then prints lines/s, tokens/s and the ratio.

    python benchmarks/tokenizer_speed.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
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

    t_sp, ref = best(lambda: sp.encode(lines))
    t_ours, ours = best(lambda: encode_texts(tok, lines))
    assert ours == ref, "ids differ from sentencepiece"
    n_tokens = sum(map(len, ref))
    print(f"{len(lines)} lines, {n_tokens} tokens, ids identical")
    print(f"sentencepiece      {len(lines) / t_sp:10.0f} lines/s {n_tokens / t_sp:12.0f} tokens/s")
    print(f"bessemer (batch)   {len(lines) / t_ours:10.0f} lines/s {n_tokens / t_ours:12.0f} tokens/s")
    print(f"ratio bessemer / sentencepiece: {t_sp / t_ours:.2f}x")


if __name__ == "__main__":
    main()
