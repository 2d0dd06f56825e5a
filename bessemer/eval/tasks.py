"""Multiple-choice benchmarks from their published local layouts (MMLU, C-Eval, CMMLU) and their prompts.

Layouts read:
- MMLU, original release and `cais/mmlu` CSVs: DIR/{dev,val,test}/{subject}_{split}.csv, no header, columns
  question, A, B, C, D, answer letter; or the Hub copy's parquet files (DIR/**/{dev,validation,test}-*.parquet
  with question, subject, choices, answer index).
- C-Eval: DIR/{dev,val,test}/{subject}_{split}.csv with header id,question,A,B,C,D,answer[,explanation]; test has
  no answers, so val is scored. An optional DIR/subject_mapping.json (shipped with C-Eval) gives each subject's
  Chinese name and category.
- CMMLU: DIR/{dev,test}/{subject}.csv with header [index,]Question,A,B,C,D,Answer.

Prompts follow lm-eval's versions of these tasks, so its numbers are reproducible: a subject description, the
shots ("question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer: X", separated by a blank line), then the question ending in
"Answer:"; each choice is scored as the continuation " A", " B", ... .
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from bessemer.data.readers import CSV_FIELD_LIMIT
from bessemer.errors import ConfigError, DataError

LETTERS = "ABCD"
CHOICE_TASKS = ("mmlu", "ceval", "cmmlu")

MMLU_CATEGORIES = {
    "STEM": (
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"
    ),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
        "professional_law world_religions"
    ),
    "social sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ),
    "other": (
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"
    ),
}
MMLU_CATEGORY = {s: cat for cat, names in MMLU_CATEGORIES.items() for s in names.split()}


@dataclass
class Question:
    """One multiple-choice question; `answer` indexes `choices`."""

    subject: str
    index: int  # row number within its subject's split
    question: str
    choices: list[str]
    answer: int


@dataclass
class Subject:
    name: str
    title: str  # how the prompt names it ("abstract algebra", "计算机网络")
    category: str
    shots: list[Question] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


@dataclass
class ChoiceTask:
    """A multiple-choice benchmark read from local files, with its prompt format."""

    name: str
    subjects: list[Subject]
    files: list[Path]
    split: str  # the split scored

    @property
    def fingerprint(self) -> str:
        """sha256 over the files read (names and bytes): results of different data never compare silently."""
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def description(self, subject: Subject) -> str:
        if self.name == "mmlu":
            return f"The following are multiple choice questions (with answers) about {subject.title}.\n\n"
        return f"以下是中国关于{subject.title}考试的单项选择题，请选出其中的正确答案。\n\n"

    def answer_cue(self) -> str:
        return "Answer:" if self.name == "mmlu" else "答案："

    def format(self, q: Question, with_answer: bool) -> str:
        lines = [q.question.strip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))]
        text = "\n".join(lines) + "\n" + self.answer_cue()
        return text + " " + LETTERS[q.answer] if with_answer else text

    def continuations(self) -> list[str]:
        return [" " + x for x in LETTERS]

    def context(self, subject: Subject, q: Question, n_shots: int) -> str:
        """The prompt for `q` with the last `n_shots` of the subject's shots (shots drop from the front)."""
        shots = subject.shots[len(subject.shots) - n_shots :] if n_shots else []
        parts = [self.format(s, True) for s in shots] + [self.format(q, False)]
        return self.description(subject) + "\n\n".join(parts)


def load_choice_task(
    task: str,
    data_dir: str | Path,
    shots: int = 5,
    subjects: list[str] | None = None,
    limit: int | None = None,
) -> ChoiceTask:
    """Read a multiple-choice task from `data_dir`; `subjects` narrows it, `limit` caps questions per subject."""
    if task not in CHOICE_TASKS:
        raise ConfigError(f"--task {task!r}: unknown{_suggest(task, (*CHOICE_TASKS, 'gsm8k'))}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; {_where(task)}")
    files: list[Path] = []
    if task == "mmlu" and not (root / "test").is_dir() and any(root.rglob("*.parquet")):
        by_split = _read_mmlu_parquet(root, files)
        scored = "test"
    else:
        scored = "val" if task == "ceval" else "test"
        by_split = {split: _read_csv_split(task, root, split, files) for split in ("dev", scored)}
    scored_rows = by_split.get(scored) or {}
    if not scored_rows:
        raise DataError(f"{root}: no {scored} files of the {task} layout found; {_where(task)}")
    names = sorted(scored_rows)
    if subjects:
        for s in subjects:
            if s not in scored_rows:
                raise ConfigError(f"--subjects {s!r}: not in {root}{_suggest(s, names)}")
        names = [s for s in names if s in subjects]
    mapping = _ceval_mapping(root, files) if task == "ceval" else {}
    out = []
    for name in names:
        title, category = _title(task, name, mapping)
        dev = by_split.get("dev", {}).get(name, [])
        if len(dev) < shots:
            raise DataError(
                f"{root}: subject {name} has {len(dev)} dev questions for --shots {shots}; lower --shots or add dev/"
            )
        questions = scored_rows[name][:limit] if limit else scored_rows[name]
        out.append(Subject(name, title, category, dev[:shots], questions))
    return ChoiceTask(task, out, files, scored)


def _read_csv_split(task: str, root: Path, split: str, files: list[Path]) -> dict[str, list[Question]]:
    folder = root / split
    if not folder.is_dir():
        return {}
    rows: dict[str, list[Question]] = {}
    for path in sorted(folder.glob("*.csv")):
        name = path.stem
        if task != "cmmlu" and name.endswith(f"_{split}"):
            name = name[: -len(split) - 1]
        rows[name] = _read_csv(task, path, name, answered=not (task == "ceval" and split == "test"))
        files.append(path)
    return rows


def _read_csv(task: str, path: Path, subject: str, answered: bool) -> list[Question]:
    """MMLU: no header, 6 columns. C-Eval: header id,question,A..D,answer[,explanation]. CMMLU: [idx,]Question,A..D,Answer."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-save it as UTF-8 (from GBK: iconv -f gbk -t utf-8)"
        ) from exc
    # a long field is read, as prepare reads csv: the limit is process-wide state, so both set the same one
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _read_rows(task, path, subject, answered, reader)
    except csv.Error as exc:  # what the dialect cannot read
        raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({exc}); check the quoting") from exc


def _read_rows(task: str, path: Path, subject: str, answered: bool, reader) -> list[Question]:
    out = []
    header = None if task == "mmlu" else next(reader, None)
    if task != "mmlu" and header is None:
        raise DataError(f"{path}: empty; the {task} layout starts with a header row")
    if header is not None:
        cols = [c.strip().lower() for c in header]
        need = ["question", "a", "b", "c", "d"] + (["answer"] if answered else [])
        missing = [c for c in need if c not in cols]
        if missing:
            raise DataError(
                f"{path}:1: header lacks {', '.join(missing)}; the {task} layout has "
                f"{'id,question,A,B,C,D,answer' if task == 'ceval' else 'Question,A,B,C,D,Answer'}"
            )
        at = {c: cols.index(c) for c in need}
    for row in reader:
        line = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            if len(row) != 6:
                raise DataError(
                    f"{path}:{line}: {len(row)} columns; MMLU rows are question,A,B,C,D,answer (quote "
                    "fields holding commas)"
                )
            question, *choices, letter = row
        else:
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{line}: {len(row)} columns, the header has {len(header)} (quote fields holding "
                    "commas)"
                )
            question = row[at["question"]]
            choices = [row[at[c]] for c in "abcd"]
            letter = row[at["answer"]] if answered else ""
        answer = -1
        if answered:
            letter = letter.strip().upper()
            if letter not in LETTERS or not letter:
                raise DataError(f"{path}:{line}: answer {letter!r} is not one of A, B, C, D")
            answer = LETTERS.index(letter)
        out.append(Question(subject, len(out), question, choices, answer))
    if not out:
        raise DataError(f"{path}: no question rows; remove the file or restore its rows")
    return out


def _read_mmlu_parquet(root: Path, files: list[Path]) -> dict[str, dict[str, list[Question]]]:
    """The Hub copy: one folder per subject (and all/) of {dev,validation,test}-*.parquet files."""
    import pyarrow.parquet as pq

    paths = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("auxiliary_train"))
    if any(p.parent.name != "all" for p in paths):
        paths = [p for p in paths if p.parent.name != "all"]  # all/ repeats the subject folders
    out: dict[str, dict[str, list[Question]]] = {}
    for path in paths:
        split = path.name.split("-")[0]
        split = {"validation": "val"}.get(split, split)
        if split not in ("dev", "val", "test"):
            continue
        table = pq.read_table(path)
        missing = {"question", "subject", "choices", "answer"} - set(table.column_names)
        if missing:
            raise DataError(
                f"{path}: lacks column(s) {', '.join(sorted(missing))} of the cais/mmlu parquet layout"
            )
        files.append(path)
        for i, r in enumerate(table.to_pylist()):
            if len(r["choices"]) != 4 or r["answer"] not in range(4):
                raise DataError(f"{path}: row {i + 1}: needs 4 choices and an answer in 0-3")
            rows = out.setdefault(split, {}).setdefault(r["subject"], [])
            rows.append(Question(r["subject"], len(rows), r["question"], list(r["choices"]), r["answer"]))
    return out


def _ceval_mapping(root: Path, files: list[Path]) -> dict:
    path = root / "subject_mapping.json"
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); use C-Eval's subject_mapping.json") from exc
    files.append(path)
    return mapping


def _title(task: str, name: str, mapping: dict) -> tuple[str, str]:
    if task == "mmlu":
        return name.replace("_", " "), MMLU_CATEGORY.get(name, "other")
    entry = mapping.get(name)
    if isinstance(entry, list) and len(entry) >= 3:  # C-Eval: [English name, Chinese name, category]
        return str(entry[1]), str(entry[2])
    return name.replace("_", " "), "all"


def _suggest(word: str, names) -> str:
    near = difflib.get_close_matches(word, list(names), n=1)
    return f"; did you mean {near[0]!r}?" if near else f"; choose from {', '.join(list(names)[:8])}"


def _where(task: str) -> str:
    return {
        "mmlu": "download MMLU (data.tar from people.eecs.berkeley.edu/~hendrycks or the cais/mmlu parquet files)",
        "ceval": "download ceval-exam.zip from the C-Eval release (dev/ val/ test/ CSVs)",
        "cmmlu": "download cmmlu_v1_0_1.zip from the CMMLU release (dev/ test/ CSVs)",
    }.get(task, "see the README eval section")
