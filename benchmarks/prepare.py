"""Throughput of `bessemer prepare` against a plain tokenize loop and a Megatron-style pool, in the same run.

Generates a jsonl corpus of --size-mb (default 200) from the bundled corpus generator in a temporary folder,
then, for each tokenizer (the demo sentencepiece model converted to `tokenizers`, and a 32k byte-level BPE
trained here on the corpus), times each in a fresh process:
  - plain loop: read a line, json.loads, tokenizer(text)["input_ids"], append (the loop everyone writes first);
  - Megatron-style, for each W: what Megatron-LM's tools/preprocess_data.py does: a multiprocessing.Pool of W
    workers, each line sent to a worker (imap, 32 lines a task) that json.loads it and encodes its text alone
    with the tokenizer Megatron-LM builds for that folder (a sentencepiece tokenizer.model: the `sentencepiece`
    library, as its Llama2Tokenizer / GPTSentencePieceTokenizer do, which is the reference `prepare` must equal;
    a tokenizer.json: transformers' AutoTokenizer called on the text, as its HuggingFaceTokenizer does), the ids
    sent back and written by the main process, document by document, to .bin/.idx;
  - `bessemer prepare --workers W --append-eod` for W in 1, 2 and the number of cores.
The Megatron-style run and `prepare` write the same .bin/.idx bytes (checked). Prints tokens/s, the ratios to
the plain loop and to the Megatron-style run of the same W (end to end, from process start, and after the
tokenizer is loaded), CPU seconds of all processes, and peak memory: the largest sum of the resident sizes of a
run's processes (sampled every 20 ms), so workers count together.

    python benchmarks/prepare.py --size-mb 70 --skip-loop   # about 4 minutes on 2 quiet cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about size_mb of jsonl stories (about one in eight Chinese); returns the number of lines."""
    sys.path.insert(0, str(ROOT))
    from bessemer.corpus.generate import chinese_story, english_story

    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    written = lines = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            # several stories per document, so documents are a few hundred tokens, like web text
            parts = [
                chinese_story(rng) if rng.random() < 0.125 else english_story(rng)
                for _ in range(rng.randint(1, 8))
            ]
            line = json.dumps({"text": "\n\n".join(parts)}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            lines += 1
    return lines


def baseline(corpus: str, tokenizer_dir: str) -> dict:
    from bessemer.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    start = time.perf_counter()
    out, tokens = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            ids = tok(json.loads(line)["text"], split_special_tokens=True)["input_ids"] + [tok.eos_token_id]
            out.append(ids)
            tokens += len(ids)
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


_MEGATRON_TOKENIZE = None


def _megatron_init(tokenizer_dir: str) -> None:
    """Each worker builds its tokenizer as Megatron-LM's build_tokenizer does for such a folder."""
    global _MEGATRON_TOKENIZE
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    model = Path(tokenizer_dir) / "tokenizer.model"
    if model.exists():
        # --tokenizer-type Llama2Tokenizer / GPTSentencePieceTokenizer: the sentencepiece library, BOS first
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(model))
        bos = sp.bos_id()
        _MEGATRON_TOKENIZE = lambda text: [bos, *sp.encode_as_ids(text)]  # noqa: E731
    else:
        # --tokenizer-type HuggingFaceTokenizer: AutoTokenizer, tokenizer(text).input_ids; special-token text is
        # encoded as text (split_special_tokens, set by load_tokenizer), as `prepare` encodes it
        from bessemer.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        _MEGATRON_TOKENIZE = lambda text: tok(text).input_ids  # noqa: E731


def _megatron_encode(line: str) -> list[int]:
    return _MEGATRON_TOKENIZE(json.loads(line)["text"])


def megatron_style(corpus: str, tokenizer_dir: str, out: str, workers: int) -> dict:
    import multiprocessing as mp

    from bessemer.data.indexed import IndexedDatasetWriter, best_dtype
    from bessemer.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    eod = tok.eos_token_id
    start = time.perf_counter()
    tokens = 0
    with (
        mp.get_context("spawn").Pool(workers, initializer=_megatron_init, initargs=(tokenizer_dir,)) as pool,
        open(corpus, encoding="utf-8") as fin,
        IndexedDatasetWriter(out, best_dtype(len(tok))) as w,
    ):
        for ids in pool.imap(_megatron_encode, fin, 32):
            if ids:  # like Megatron, no eod after an empty document (we write none at all)
                w.add_document(ids + [eod])
                tokens += len(ids) + 1
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def one(args) -> None:
    """Run one Python-level measurement in this process and print it as JSON."""
    if args.one == "baseline":
        result = baseline(args.corpus, args.tokenizer)
    else:
        result = megatron_style(args.corpus, args.tokenizer, args.out, int(args.one.split(":")[1]))
    print(json.dumps(result))


def measure(what: str, corpus: Path, tokenizer: str, out: Path) -> dict:
    """Run one measurement in a fresh process (`bessemer prepare` itself, or this file with --one) and time it
    end to end: process start, imports, tokenizer load, work."""
    if what.isdigit():
        cmd = [sys.executable, "-m", "bessemer", "prepare", "--quiet", "--input", str(corpus), "--tokenizer",
               tokenizer, "--out", str(out), "--workers", what, "--append-eod"]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--one", what, "--corpus", str(corpus), "--tokenizer", tokenizer,
               "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_memory(proc)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process of the run, once waited for
    if what.isdigit():
        meta = json.loads(Path(f"{out}.meta.json").read_text())
        result = {"tokens": meta["tokens"], "seconds": meta["work_seconds"], "used": meta["workers"]}
    else:
        result = json.loads(stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**result, "wall": wall, "cpu": cpu, "peak_mb": peak / 2**20}


def peak_memory(proc: subprocess.Popen, every: float = 0.02) -> int:
    """The largest sum of resident set sizes of `proc` and its descendants, sampled until it ends."""
    import psutil

    peak = 0
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(every)
    except psutil.NoSuchProcess:
        pass
    return peak


def train_bpe(corpus: Path, out_dir: Path, vocab_size: int = 32000, sample_mb: float = 20) -> Path:
    """A byte-level BPE tokenizer folder trained on the start of the corpus (GPT-2 style, like the issue's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        seen = 0
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                seen += len(line)
                if seen > sample_mb * 1e6:
                    return
                yield json.loads(line)["text"]

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts(), trainer)
    out_dir.mkdir(parents=True)
    tk.save(str(out_dir / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return out_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=200.0, help="corpus size to generate (default 200)")
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1,2,cores)")
    p.add_argument(
        "--tokenizer", default=None, help="one tokenizer folder (default: the demo sentencepiece and a BPE)"
    )
    p.add_argument("--skip-loop", action="store_true", help="leave out the plain loop (the slowest run)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args)
        return 0
    cores = os.cpu_count() or 1
    workers = sorted({int(w) for w in (args.workers or f"1,2,{cores}").split(",")})
    ok = True
    with tempfile.TemporaryDirectory(prefix="bessemer-bench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        t = time.perf_counter()
        lines = make_corpus(corpus, args.size_mb)
        size = corpus.stat().st_size / 1e6
        print(
            f"corpus: {size:.1f} MB, {lines:,} documents (generated in {time.perf_counter() - t:.1f}s); "
            f"{cores} cores, load average {os.getloadavg()[0]:.1f} at start"
        )
        if args.tokenizer:
            tokenizers = {"given": args.tokenizer}
        else:
            sys.path.insert(0, str(ROOT))
            from bessemer.assets import build_demo_tokenizer

            bpe = train_bpe(corpus, tmp / "bpe")
            size = json.loads((bpe / "tokenizer.json").read_text())["model"]["vocab"]
            tokenizers = {
                "sentencepiece (demo, 32,000 pieces)": str(build_demo_tokenizer(tmp / "tokenizer")),
                # the generated corpus has a small vocabulary: the trainer stops short of 32k
                f"byte-level BPE (trained here, {len(size):,} entries)": str(bpe),
            }
        for label, tokenizer in tokenizers.items():
            ok &= compare(label, corpus, tokenizer, workers, tmp, args.skip_loop)
    print(
        "wall: end to end from process start (imports, tokenizer load); work: after the tokenizer is loaded; "
        "CPU: seconds of all its processes, start-up included; x megatron: the Megatron-style run's time over "
        "prepare's at the same W, end to end (wall) and after loading (work); x loop: work-time ratio; peak "
        "memory: all processes of a run together; prepare uses a worker per 32 MB of input at most"
    )
    return 0 if ok else 1


def compare(label: str, corpus: Path, tokenizer: str, workers: list[int], tmp: Path, skip_loop: bool) -> bool:
    """Time the plain loop, then Megatron-style and `prepare` at each worker count; print one table."""
    base = None if skip_loop else measure("baseline", corpus, tokenizer, tmp / "unused")
    rows = [] if skip_loop else [("plain loop (encode per line)", base, None)]
    same = True
    for w in workers:
        mega = measure(f"megatron:{w}", corpus, tokenizer, tmp / f"m{w}")
        ours = measure(str(w), corpus, tokenizer, tmp / f"out{w}")
        rows += [
            (f"megatron-style pool, {w} workers", mega, None),
            (
                f"bessemer prepare --workers {w}" + (f" ({ours['used']} used)" if ours["used"] != w else ""),
                ours,
                mega,
            ),
        ]
        for suffix in (".bin", ".idx"):
            same &= Path(f"{tmp}/m{w}{suffix}").read_bytes() == Path(f"{tmp}/out{w}{suffix}").read_bytes()
            Path(f"{tmp}/m{w}{suffix}").unlink()
            Path(f"{tmp}/out{w}{suffix}").unlink()
    print(f"\n{label}")
    print(
        f"{'run':42} {'tokens':>11} {'wall s':>7} {'work s':>7} {'CPU s':>7} {'tokens/s':>10} "
        f"{'x megatron wall':>15} {'work':>5} {'x loop':>6} {'peak mem':>9}"
    )
    base_work = base["tokens"] / base["seconds"] if base else None
    for name, r, mega in rows:
        work = r["tokens"] / r["seconds"]
        vs = f"{mega['wall'] / r['wall']:>15.2f} {mega['seconds'] / r['seconds']:>5.2f}" if mega else " " * 21
        print(
            f"{name:42} {r['tokens']:>11,} {r['wall']:>7.1f} {r['seconds']:>7.1f} {r['cpu']:>7.1f} {work:>10,.0f} "
            f"{vs} {f'{work / base_work:.2f}' if base_work else '-':>6} {r['peak_mb']:>8.0f}M"
        )
    if len({r["tokens"] for _, r, _ in rows}) > 1:
        print("warning: token counts differ between runs")
        return False
    if not same:
        print("warning: the Megatron-style run and prepare wrote different bytes")
    return same


if __name__ == "__main__":
    sys.exit(main())
