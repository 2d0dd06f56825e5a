"""benchmarks/eval.py hands lm-eval the MMLU CSVs as JSON lines of strings, with the same task otherwise."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import yaml

from bessemer.eval.lm_eval_tasks import mmlu_csv_task

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "benchmarks" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_subjects_become_json_lines_of_text(tmp_path):
    rows = {
        "dev": [["1 + 1?", "1", "2", "3", "4", "B"]],
        "test": [["Which?", "None", "NA", "(-inf, 10)", "5", "A"]],
    }
    for split, part in rows.items():
        (tmp_path / "data" / split).mkdir(parents=True)
        with open(tmp_path / "data" / split / f"anatomy_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(part)
    m, work = _module(), tmp_path / "work"
    work.mkdir()
    m._csv_to_jsonl(tmp_path / "data", work, "anatomy")
    test = [json.loads(line) for line in (work / "test" / "anatomy_test.jsonl").read_text().splitlines()]
    assert test == [
        {"question": "Which?", "A": "None", "B": "NA", "C": "(-inf, 10)", "D": "5", "answer": "A"}
    ]
    csv_task = yaml.safe_load(mmlu_csv_task("t", work, "anatomy", 5))
    json_task = yaml.safe_load(m._as_json_task(mmlu_csv_task("t", work, "anatomy", 5), work, "anatomy"))
    assert json_task["dataset_path"] == "json" and "column_names" not in json_task["dataset_kwargs"]
    assert json_task["dataset_kwargs"]["data_files"]["test"] == str(work / "test" / "anatomy_test.jsonl")
    assert Path(json_task["dataset_kwargs"]["data_files"]["dev"]).is_file()
    for key in (
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "description",
        "num_fewshot",
        "fewshot_config",
    ):
        assert json_task[key] == csv_task[key]
