"""lm-eval task files over local MMLU-layout CSVs, so lm-eval scores the same files and prompt as `bessemer eval`."""

from __future__ import annotations

from pathlib import Path

# The classic MMLU prompt as lm-eval writes it; first_n shots from dev/, as Bessemer takes them.
TASK_YAML = """task: {task}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {data}/test/{name}_test.csv
    dev: {data}/dev/{name}_dev.csv
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
num_fewshot: {shots}
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {title}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def mmlu_csv_task(task: str, data: Path, subject: str, shots: int) -> str:
    """The YAML of lm-eval task `task` scoring `subject` from `data/{dev,test}/` CSVs with `shots` shots."""
    return TASK_YAML.format(task=task, data=data, name=subject, shots=shots, title=subject.replace("_", " "))
