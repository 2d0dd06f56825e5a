"""GSM8K: DIR/test.jsonl scored, DIR/train.jsonl gives the shots; few-shot chain of thought, greedy, exact match.

Each row is {"question": ..., "answer": "...reasoning...\\n#### 42"}. The prompt is "Question: q\\nAnswer: a" per
shot (the reasoning is the chain of thought), then "Question: q\\nAnswer:"; generation stops at the next
"Question:" or a blank line. The prediction is the number after "####", else after "The answer is", else the
last number generated; prediction and reference compare as numbers ("3.50" is "3.5", "$1,000." is "1000").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bessemer.errors import DataError

STOPS = ["Question:", "\n\n", "</s>", "<|im_end|>"]
_NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?"  # 12, -3, $1,000, 3.50 (a sentence's full stop is not a decimal point)
_FINAL = re.compile(r"####\s*(" + _NUMBER + ")")
_ANSWER_IS = re.compile(r"answer is:?\s*(" + _NUMBER + ")", re.IGNORECASE)  # lm-eval's gsm8k-cot form


@dataclass
class Problem:
    index: int
    question: str
    answer: str  # the reference's final number, normalised


def normalize(number: str) -> str:
    """One spelling per number: no "$" or thousands commas, no trailing zeros after a decimal point ("3.50" and
    "3.5", "18.00" and "18" are the same answer); lm-eval's string match would call those pairs different."""
    s = number.replace(",", "").replace("$", "").rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def extract(text: str) -> str | None:
    """The model's final number: the first after "####" (lm-eval's strict match), else the first after "The
    answer is" (its chain-of-thought variant's), else the last number in the text (its flexible extract)."""
    m = _FINAL.search(text) or _ANSWER_IS.search(text)
    if m:
        return normalize(m.group(1))
    nums = re.findall(_NUMBER, text)
    return normalize(nums[-1]) if nums else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(
            f"{path}: not found; GSM8K needs test.jsonl (and train.jsonl for shots) from grade-school-math"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg}); one object per line") from exc
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                raise DataError(f"{path}:{line_no}: needs string fields question and answer")
            if not isinstance(row.get("answer"), str) or not _FINAL.search(row["answer"]):
                raise DataError(f"{path}:{line_no}: answer must end with '#### N' (the final number)")
            rows.append(row)
    return rows


@dataclass
class Gsm8kTask:
    shots: list[dict]
    problems: list[Problem]
    files: list[Path]

    def prompt(self, p: Problem, n_shots: int | None = None) -> str:
        """The prompt with the last `n_shots` shots (all by default): shots drop from the front."""
        n = len(self.shots) if n_shots is None else n_shots
        shots = self.shots[len(self.shots) - n :] if n else []
        parts = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
        return "\n\n".join([*parts, f"Question: {p.question}\nAnswer:"])


def load_gsm8k(data_dir: str | Path, shots: int = 8, limit: int | None = None) -> Gsm8kTask:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found; download grade-school-math's data/ (train.jsonl, test.jsonl)"
        )
    test = read_jsonl(root / "test.jsonl")
    files = [root / "test.jsonl"]
    train = []
    if shots:
        train = read_jsonl(root / "train.jsonl")
        files.append(root / "train.jsonl")
        if len(train) < shots:
            raise DataError(f"{root / 'train.jsonl'}: {len(train)} rows for --shots {shots}; lower --shots")
    problems = [
        Problem(i, r["question"], normalize(_FINAL.search(r["answer"]).group(1))) for i, r in enumerate(test)
    ]
    return Gsm8kTask(train[:shots], problems[:limit] if limit else problems, files)


def run_gsm8k(
    model,
    tokenizer,
    task: Gsm8kTask,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    skip: set[int] = frozenset(),
    on_prediction: Callable[[dict], None] | None = None,
) -> tuple[list[dict], int]:
    """Greedy answers for the problems not in `skip`; returns predictions and how many prompts were shortened."""
    from bessemer.infer.generate import generate
    from bessemer.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, stop=list(STOPS))
    todo = [p for p in task.problems if p.index not in skip]
    out, truncated = [], 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        requests = []
        for p in batch:
            req, shortened = _fitted_request(tokenizer, task, p, params, model.config.max_seq_len)
            requests.append(req)
            truncated += shortened
        seqs = generate(model, [r.prompt_ids for r in requests], [r.params for r in requests], tokenizer)
        for p, seq in zip(batch, seqs):
            pred = extract(seq.text)
            row = {"subject": "gsm8k", "index": p.index, "answer": p.answer, "pred": pred, "text": seq.text}
            out.append(row)
            if on_prediction is not None:
                on_prediction(row)
    return out, truncated


def _fitted_request(tokenizer, task: Gsm8kTask, p: Problem, params, context_len: int):
    """(request, shortened): as many shots as fit the context (they drop from the front); with none left, the
    question itself loses its first tokens."""
    from bessemer.infer.request import CONTEXT_EXCEEDED, RequestError, build_request

    for n in range(len(task.shots), 0, -1):
        try:
            prompt = task.prompt(p, n)
            return build_request(tokenizer, None, params, context_len=context_len, prompt=prompt), n < len(
                task.shots
            )
        except RequestError as exc:
            if exc.code != CONTEXT_EXCEEDED:
                raise
    req = build_request(
        tokenizer, None, params, context_len=context_len, prompt=task.prompt(p, 0), truncate=True
    )
    return req, bool(task.shots) or req.truncated
