"""Summaries (micro and macro), the resume cache, and comparison of two results.json files."""

from __future__ import annotations

import json

import pytest

from bessemer.errors import DataError
from bessemer.eval.results import PredictionCache, compare_results, delta_markdown, summarize, write_results


def test_summary_micro_and_macro():
    outcomes = [("a", True), ("a", False), ("a", True), ("a", True), ("b", False)]
    s = summarize(outcomes, {"a": "STEM", "b": "other"})
    assert s["subjects"]["a"] == {"category": "STEM", "n": 4, "correct": 3, "accuracy": 0.75}
    assert s["overall"]["micro_accuracy"] == 3 / 5 and s["overall"]["macro_accuracy"] == (0.75 + 0) / 2
    assert s["categories"]["other"]["accuracy"] == 0


def test_cache_resumes_and_refuses_another_run(tmp_path):
    header = {"task": "mmlu", "shots": 5}
    cache = PredictionCache(tmp_path, header, resume=False)
    cache.add({"subject": "a", "index": 0, "pred": 1})
    cache.close()
    with open(tmp_path / "predictions.partial.jsonl", "a") as f:
        f.write('{"subject": "a", "ind')  # killed mid-line
    again = PredictionCache(tmp_path, header, resume=True)
    assert again.done == {("a", 0): {"subject": "a", "index": 0, "pred": 1}}
    again.close()
    with pytest.raises(DataError, match="belong to another run"):
        PredictionCache(tmp_path, {**header, "shots": 0}, resume=True)
    with pytest.raises(DataError, match="an earlier eval stopped here; add --resume to continue it"):
        PredictionCache(tmp_path, header, resume=False)  # never silently drops a killed run's predictions
    path = write_results(tmp_path, {"task": "mmlu", "overall": {}})
    assert json.loads(path.read_text())["task"] == "mmlu"
    assert not (tmp_path / "predictions.partial.jsonl").exists()


def test_compare_two_results(tmp_path):
    def results(name, acc):
        subjects = {k: {"accuracy": v} for k, v in acc.items()}
        body = {
            "task": "mmlu",
            "subjects": subjects,
            "overall": {"micro_accuracy": 0.5, "macro_accuracy": 0.4},
        }
        (tmp_path / name).write_text(json.dumps(body))
        return tmp_path / name

    a = results("a.json", {"x": 0.5, "y": 0.25})
    b = results("b.json", {"x": 0.75, "z": 1.0})
    d = compare_results(a, b)
    assert d.rows == [("x", 0.5, 0.75), ("y", 0.25, None), ("z", None, 1.0)]
    md = delta_markdown(d, "ref", "ours")
    assert "| x | 50.00 | 75.00 | +25.00 |" in md and "| y | 25.00 | - | - |" in md
    assert "| **overall (micro, questions)** | 50.00 | 50.00 | +0.00 |" in md
    (tmp_path / "c.json").write_text(json.dumps({"task": "gsm8k", "overall": {}}))
    with pytest.raises(DataError, match="task 'gsm8k' differs"):
        compare_results(a, tmp_path / "c.json")
