"""Readers of the published MMLU / C-Eval / CMMLU layouts, prompts, and one-line errors for bad files."""

from __future__ import annotations

import pytest

from bessemer.errors import ConfigError, DataError
from bessemer.eval.tasks import load_choice_task
from tests.eval.helpers import N_DEV, SUBJECTS


def test_mmlu_csv_layout_and_prompt(mmlu_dir):
    task = load_choice_task("mmlu", mmlu_dir, shots=2)
    assert [s.name for s in task.subjects] == sorted(SUBJECTS)
    algebra = task.subjects[0]
    assert algebra.category == "STEM" and task.subjects[1].category == "social sciences"
    assert len(algebra.shots) == 2 and len(algebra.questions) == len(SUBJECTS["abstract_algebra"]) - N_DEV
    q = algebra.questions[0]
    assert q.question == "How many elements does S_3 have?" and q.answer == 1
    assert algebra.shots[1].question == 'Is "Z, under addition" a cyclic group?'  # quoted comma kept
    text = task.context(algebra, q, 2)
    assert text.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )
    assert "\nD. 6\nAnswer: C\n\n" in text and text.endswith("A. 3\nB. 6\nC. 9\nD. 1\nAnswer:")
    assert task.context(algebra, q, 1).count("Answer:") == 2  # the first shot dropped
    assert load_choice_task("mmlu", mmlu_dir, 0, ["abstract_algebra"], limit=1).subjects[0].questions == [q]


def test_mmlu_parquet_layout(tmp_path, mmlu_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_task = load_choice_task("mmlu", mmlu_dir, shots=2)
    for s in csv_task.subjects:
        (tmp_path / s.name).mkdir()
        for split, rows in (("dev", s.shots), ("test", s.questions)):
            table = pa.table(
                {
                    "question": [r.question for r in rows],
                    "subject": [s.name] * len(rows),
                    "choices": [r.choices for r in rows],
                    "answer": [r.answer for r in rows],
                }
            )
            pq.write_table(table, tmp_path / s.name / f"{split}-00000-of-00001.parquet")
    task = load_choice_task("mmlu", tmp_path, shots=2)
    assert [(s.name, s.shots, s.questions) for s in task.subjects] == [
        (s.name, s.shots, s.questions) for s in csv_task.subjects
    ]


def test_ceval_and_cmmlu_layouts(tmp_path):
    import json

    ceval = tmp_path / "ceval"
    for split in ("dev", "val", "test"):
        (ceval / split).mkdir(parents=True)
        head = "id,question,A,B,C,D" + (
            ",answer,explanation" if split == "dev" else ",answer" * (split == "val")
        )
        rows = [
            f"{i},问题{i},甲,乙,丙,丁" + (",B,解释" if split == "dev" else ",C" * (split == "val"))
            for i in range(3)
        ]
        (ceval / split / f"computer_network_{split}.csv").write_text(
            "\n".join([head, *rows]) + "\n", encoding="utf-8"
        )
    (ceval / "subject_mapping.json").write_text(
        json.dumps({"computer_network": ["Computer Network", "计算机网络", "STEM"]}), encoding="utf-8"
    )
    task = load_choice_task("ceval", ceval, shots=1)
    s = task.subjects[0]
    assert task.split == "val" and s.title == "计算机网络" and s.category == "STEM"
    assert [q.answer for q in s.questions] == [2, 2, 2] and s.shots[0].answer == 1
    assert task.context(s, s.questions[0], 1) == (
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
        "问题0\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： B\n\n问题0\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    cmmlu = tmp_path / "cmmlu"
    for split in ("dev", "test"):
        (cmmlu / split).mkdir(parents=True)
        (cmmlu / split / "anatomy.csv").write_text(
            ",Question,A,B,C,D,Answer\n0,骨头有几块,1,2,206,3,C\n", encoding="utf-8"
        )
    task = load_choice_task("cmmlu", cmmlu, shots=1)
    assert task.subjects[0].name == "anatomy" and task.subjects[0].questions[0].answer == 2


def test_bad_input_names_file_row_and_fix(tmp_path, mmlu_dir):
    with pytest.raises(DataError, match="data folder not found"):
        load_choice_task("mmlu", tmp_path / "missing")
    with pytest.raises(ConfigError, match="did you mean 'mmlu'"):
        load_choice_task("mmlx", mmlu_dir)
    with pytest.raises(ConfigError, match="did you mean 'abstract_algebra'"):
        load_choice_task("mmlu", mmlu_dir, subjects=["abstract_algebr"])
    with pytest.raises(DataError, match="has 2 dev questions for --shots 5"):
        load_choice_task("mmlu", mmlu_dir, shots=5)
    bad = tmp_path / "bad"
    for split in ("dev", "test"):
        (bad / split).mkdir(parents=True)
        (bad / split / f"x_{split}.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,A\n")
    (bad / "test" / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,A\n")
    with pytest.raises(DataError, match=r"x_test\.csv:2: 5 columns; MMLU rows are question,A,B,C,D,answer"):
        load_choice_task("mmlu", bad, shots=1)
    (bad / "test" / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(DataError, match=r"x_test\.csv:2: answer 'E' is not one of A, B, C, D"):
        load_choice_task("mmlu", bad, shots=1)


CEVAL_HEAD = "id,question,A,B,C,D,answer\n"
HOSTILE = {
    "gbk": ((CEVAL_HEAD + "0,问题,甲,乙,丙,丁,C\n").encode("gbk"), r"net_val\.csv:2: not UTF-8 .*iconv"),
    "missing-letter": (CEVAL_HEAD + "0,问题,甲,乙,丙,丁,\n", r"net_val\.csv:2: answer '' is not one of"),
    "non-abcd": (
        CEVAL_HEAD + "0,q,a,b,c,d,C\n1,问题,甲,乙,丙,丁,E\n",
        r"net_val\.csv:3: answer 'E' is not one of",
    ),
    "extra-column": (
        CEVAL_HEAD + "0,问题,甲,乙,丙,丁,C,多\n",
        r"net_val\.csv:2: 8 columns, the header has 7",
    ),
    "header-only": (CEVAL_HEAD, r"net_val\.csv: no question rows"),
    "empty": ("", r"net_val\.csv: empty; the ceval layout starts with a header row"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_ceval_files_are_one_line_naming_file_and_row(tmp_path, name):
    """Each is a DataError (one line from the CLI) naming the file and row; a BOM and a lower-case letter read."""
    body, message = HOSTILE[name]
    for split in ("dev", "val"):
        (tmp_path / split).mkdir()
    (tmp_path / "dev" / "net_dev.csv").write_text(CEVAL_HEAD + "0,q,a,b,c,d,B\n", encoding="utf-8")
    val = tmp_path / "val" / "net_val.csv"
    val.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    with pytest.raises(DataError, match=message) as err:
        load_choice_task("ceval", tmp_path, shots=1)
    assert "\n" not in str(err.value)
    val.write_text("\ufeff" + CEVAL_HEAD + "0,问题,甲,乙,丙,丁, b \n", encoding="utf-8")
    assert load_choice_task("ceval", tmp_path, shots=1).subjects[0].questions[0].answer == 1
    # a field past the csv module's 128 KiB default reads (as in prepare), whichever ran first in the process
    val.write_text(CEVAL_HEAD + '0,"' + "x" * 200_000 + '",a,b,c,d,C\n', encoding="utf-8")
    assert len(load_choice_task("ceval", tmp_path, shots=1).subjects[0].questions[0].question) == 200_000
