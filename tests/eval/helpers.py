"""Small local benchmark files in the published layouts, and lm-eval task YAMLs that read the same files."""

from __future__ import annotations

import csv
from pathlib import Path

from bessemer.eval.lm_eval_tasks import mmlu_csv_task

# (question, A, B, C, D, answer); commas and quotes exercise the CSV quoting
SUBJECTS = {
    "abstract_algebra": [
        ("Find the order of the group Z_4 x Z_2.", "2", "4", "8", "6", "C"),
        ('Is "Z, under addition" a cyclic group?', "Yes", "No", "Only mod 2", "Never", "A"),
        ("How many elements does S_3 have?", "3", "6", "9", "1", "B"),
        ("What is the identity of (R, +)?", "1", "-1", "e", "0", "D"),
        ("Which group is abelian?", "S_3", "Z_5", "D_4", "Q_8", "B"),
    ],
    "high_school_geography": [
        ("Which is a continent?", "Asia", "Nile", "Alps", "Rome", "A"),
        ("The Sahara is a", "forest", "sea", "desert", "city", "C"),
        ("Which river flows through Egypt?", "Rhine", "Nile", "Volga", "Seine", "B"),
        ("Mount Everest lies in the", "Andes", "Rockies", "Alps", "Himalayas", "D"),
        ("Which ocean is largest?", "Pacific", "Atlantic", "Indian", "Arctic", "A"),
    ],
}
N_DEV = 2  # first rows of each subject are its dev/ shots


def write_mmlu(root: Path) -> Path:
    """DIR/dev/{subject}_dev.csv and DIR/test/{subject}_test.csv, no header, as the original MMLU release."""
    for split in ("dev", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for name, rows in SUBJECTS.items():
        for split, part in (("dev", rows[:N_DEV]), ("test", rows[N_DEV:])):
            with open(root / split / f"{name}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(part)
    return root


def write_lm_eval_tasks(data: Path, out: Path, shots: int = N_DEV) -> list[str]:
    """One lm-eval task per subject reading our CSVs (dataset_path: csv), with the classic MMLU prompt."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name in SUBJECTS:
        task = f"local_mmlu_{name}"
        yaml = mmlu_csv_task(task, data, name, shots)
        (out / f"{task}.yaml").write_text(yaml)
        names.append(task)
    return names
