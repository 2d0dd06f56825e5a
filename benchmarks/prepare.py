"""Throughput of `bessemer prepare` against a plain tokenize loop, measured in the same run.

Generates a jsonl corpus of --size-mb (default 200) from the bundled corpus generator in a temporary folder,
then times, each in a fresh process:
  - baseline: read a line, json.loads, tokenizer(text)["input_ids"], append (the loop everyone writes first);
  - `bessemer prepare --workers W` for W in 1, 2 and the number of cores.
Prints tokens/s, the ratio to the baseline, and peak RSS (of the largest single process of the run).

    python benchmarks/prepare.py --size-mb 50
"""

from __future__ import annotations

import argparse
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
            ids = tok(json.loads(line)["text"])["input_ids"]
            out.append(ids)
            tokens += len(ids)
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def run_prepare(corpus: str, tokenizer_dir: str, out: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "bessemer", "prepare", "--quiet", "--input", corpus, "--tokenizer", tokenizer_dir,
           "--out", out, "--workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    return {"tokens": meta["tokens"], "seconds": meta["work_seconds"], "cli_seconds": wall}


def one(args) -> None:
    """Run one measurement in this process and print it as JSON with the peak RSS figures."""
    if args.one == "baseline":
        result = baseline(args.corpus, args.tokenizer)
    else:
        result = run_prepare(args.corpus, args.tokenizer, args.out, int(args.one))
    result["rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def measure(what: str, corpus: Path, tokenizer: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", what, "--corpus", str(corpus), "--tokenizer", tokenizer,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start  # end to end: process start, imports, tokenizer load, work
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=200.0, help="corpus size to generate (default 200)")
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1,2,cores)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the demo tokenizer)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args)
        return 0
    cores = os.cpu_count() or 1
    workers = sorted({int(w) for w in (args.workers or f"1,2,{cores}").split(",")})
    with tempfile.TemporaryDirectory(prefix="bessemer-bench-") as tmp:
        tmp = Path(tmp)
        if args.tokenizer is None:
            sys.path.insert(0, str(ROOT))
            from bessemer.assets import build_demo_tokenizer

            args.tokenizer = str(build_demo_tokenizer(tmp / "tokenizer"))
        corpus = tmp / "corpus.jsonl"
        t = time.perf_counter()
        lines = make_corpus(corpus, args.size_mb)
        size = corpus.stat().st_size / 1e6
        print(
            f"corpus: {size:.1f} MB, {lines:,} documents (generated in {time.perf_counter() - t:.1f}s); {cores} cores"
        )
        base = measure("baseline", corpus, args.tokenizer, tmp / "unused")
        rows = [("plain loop (encode per line)", base)]
        for w in workers:
            out = tmp / f"out{w}"
            rows.append((f"bessemer prepare --workers {w}", measure(str(w), corpus, args.tokenizer, out)))
            for suffix in (".bin", ".idx"):
                Path(f"{out}{suffix}").unlink()
        print(
            f"{'run':34} {'tokens':>12} {'wall s':>7} {'tokens/s':>10} {'x loop':>6} {'work s':>7} {'tokens/s':>10} {'x loop':>6} {'peak RSS':>9}"
        )  # noqa: E501
        base_wall = base["tokens"] / base["wall"]
        base_work = base["tokens"] / base["seconds"]
        for name, r in rows:
            wall, work = r["tokens"] / r["wall"], r["tokens"] / r["seconds"]
            rss = r["rss_self_mb"] if r is base else r["rss_children_mb"]
            print(
                f"{name:34} {r['tokens']:>12,} {r['wall']:>7.1f} {wall:>10,.0f} {wall / base_wall:>6.2f} "
                f"{r['seconds']:>7.1f} {work:>10,.0f} {work / base_work:>6.2f} {rss:>8.0f}M"
            )
        if any(r["tokens"] != base["tokens"] for _, r in rows):
            print("warning: token counts differ between runs")
            return 1
    print(
        "wall: end to end from process start (imports, tokenizer load); work: after the tokenizer is loaded"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
