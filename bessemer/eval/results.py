"""results.json (summary + per-question predictions), the per-question cache `--resume` reads, and comparison.

results.json is written once, atomically, when every question is scored. While the eval runs, each prediction
is appended to OUT/predictions.partial.jsonl (first line: what the predictions belong to); a killed eval
resumes from it, and it is removed once results.json is in place. `--resume` also reuses the predictions of a
finished OUT/results.json of the same run (task, model, data, shots), so a run can be widened (a larger
--limit, more subjects) without scoring the same questions twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bessemer.checkpoint.files import atomic_write_text
from bessemer.errors import DataError

log = logging.getLogger(__name__)

PARTIAL = "predictions.partial.jsonl"


def summarize(outcomes: list[tuple[str, bool]], categories: dict[str, str]) -> dict:
    """Per-subject and per-category counts and accuracy of (subject, correct) outcomes; overall micro
    (over questions) and macro (over subjects)."""
    subjects: dict[str, dict] = {}
    for subject, correct in outcomes:
        s = subjects.setdefault(subject, {"category": categories.get(subject, "all"), "n": 0, "correct": 0})
        s["n"] += 1
        s["correct"] += bool(correct)
    for s in subjects.values():
        s["accuracy"] = s["correct"] / s["n"]
    cats: dict[str, dict] = defaultdict(lambda: {"n": 0, "correct": 0, "subjects": 0})
    for s in subjects.values():
        c = cats[s["category"]]
        c["n"] += s["n"]
        c["correct"] += s["correct"]
        c["subjects"] += 1
    for c in cats.values():
        c["accuracy"] = c["correct"] / c["n"]
    n = sum(s["n"] for s in subjects.values())
    correct = sum(s["correct"] for s in subjects.values())
    return {
        "subjects": dict(sorted(subjects.items())),
        "categories": dict(sorted(cats.items())),
        "overall": {
            "n": n,
            "correct": correct,
            "micro_accuracy": correct / n if n else 0.0,
            "macro_accuracy": sum(s["accuracy"] for s in subjects.values()) / len(subjects)
            if subjects
            else 0.0,
        },
    }


def write_results(out_dir: Path, results: dict) -> Path:
    """Write OUT/results.json atomically, then drop the partial cache it replaces."""
    path = Path(out_dir) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (Path(out_dir) / PARTIAL).unlink(missing_ok=True)
    return path


class PredictionCache:
    """Append-only per-question cache; `header` identifies the run (task, model, data fingerprint, shots)."""

    def __init__(self, out_dir: Path, header: dict, resume: bool):
        self.path = Path(out_dir) / PARTIAL
        self.done: dict[tuple[str, int], dict] = {}
        if resume:
            self._read_finished(Path(out_dir) / "results.json", header)
        if not resume and self.path.is_file():
            raise DataError(
                f"{self.path}: an earlier eval stopped here; add --resume to continue it, or remove the file "
                "(or pick another --out) to start over"
            )
        partial = resume and self.path.is_file()
        if partial:
            self._read(header)
        if resume and not self.done:
            log.info("nothing to resume from in %s; starting from the first question", out_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not partial:
            self.path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _read_finished(self, path: Path, header: dict) -> None:
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); drop --resume to start over") from exc
        found = {k: data.get(k) for k in header} if isinstance(data, dict) else None
        if found != header:
            raise DataError(
                f"{path}: these results belong to another run ({found}); drop --resume or pick another --out"
            )
        for row in data.get("predictions", []):
            self.done[(row["subject"], row["index"])] = row

    def _read(self, header: dict) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            found = json.loads(lines[0])["header"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            found = None
        if found != header:
            raise DataError(
                f"{self.path}: cached predictions belong to another run ({found}); remove the file or pick "
                "another --out to start over"
            )
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.done[(row["subject"], row["index"])] = row
            except (json.JSONDecodeError, TypeError, KeyError):
                continue  # the line being written when the eval was killed
        log.info("resuming: %d questions already scored in %s", len(self.done), self.path)

    def add(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; give the results.json an eval wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); give the results.json an eval wrote") from exc
    if not isinstance(data, dict) or "overall" not in data or "task" not in data:
        raise DataError(f"{path}: not a bessemer eval results.json (no task/overall keys)")
    return data


@dataclass
class ResultsDelta:
    task: str
    rows: list[tuple[str, float | None, float | None]]  # subject, accuracy A, accuracy B
    overall: list[tuple[str, float, float]]  # (label, A, B)


def compare_results(a: str | Path, b: str | Path) -> ResultsDelta:
    """Per-subject accuracy of two results.json files of the same task, and the overall delta."""
    ra, rb = read_results(a), read_results(b)
    if ra["task"] != rb["task"]:
        raise DataError(
            f"{b}: task {rb['task']!r} differs from {a}'s {ra['task']!r}; compare results of one task"
        )
    sa, sb = ra.get("subjects", {}), rb.get("subjects", {})
    rows = [
        (name, sa[name]["accuracy"] if name in sa else None, sb[name]["accuracy"] if name in sb else None)
        for name in sorted(set(sa) | set(sb))
    ]
    overall = []
    for key, label in (
        ("micro_accuracy", "overall (micro, questions)"),
        ("macro_accuracy", "overall (macro, subjects)"),
    ):
        if key in ra["overall"] and key in rb["overall"]:
            overall.append((label, ra["overall"][key], rb["overall"][key]))
    return ResultsDelta(ra["task"], rows, overall)


def delta_markdown(d: ResultsDelta, label_a: str, label_b: str) -> str:
    """The comparison as a Markdown table (the recipes' "reference vs ours")."""

    def cell(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    def diff(x: float | None, y: float | None) -> str:
        return "-" if x is None or y is None else f"{100 * (y - x):+.2f}"

    lines = [f"| {d.task} subject | {label_a} | {label_b} | delta |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {cell(x)} | {cell(y)} | {diff(x, y)} |" for n, x, y in d.rows]
    lines += [f"| **{n}** | {cell(x)} | {cell(y)} | {diff(x, y)} |" for n, x, y in d.overall]
    return "\n".join(lines) + "\n"
