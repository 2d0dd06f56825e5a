"""GSM8K: reading, the few-shot prompt, answer extraction, and greedy answers equal to transformers' generate."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bessemer.errors import DataError
from bessemer.eval.gsm8k import extract, load_gsm8k, run_gsm8k

TRAIN = [
    {"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
    {"question": "A box holds 1,200 pins; half are red. Red pins?", "answer": "1200 / 2 = 600\n#### 600"},
]
TEST = [{"question": "Ann had $10 and spent $4. Left?", "answer": "10 - 4 = 6\n#### 6"}]


def write(root, train=TRAIN, test=TEST):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return root


def test_extract_final_number():
    assert extract("so 3+4=7.\n#### 1,234") == "1234"
    assert extract("It costs $18.00 in the end.") == "18"
    assert extract("-3 then 2.5") == "2.5"
    assert extract("no number") is None


# (generated text, the reference's final number): each pair is a correct answer
TRICKY = [
    ("He pays $1,000.", "1000"),
    ("So the answer is -3", "-3"),
    ("Each costs 3.50", "3.5"),
    ("The answer is 5.0", "5"),
    ("#### 42\nThe answer is 41", "42"),
    ("The answer is 41.\n#### 42", "42"),
    ("The answer is 12. That took 3 steps.", "12"),
    ("#### $1,000", "1000"),
    ("#### 1,000.00", "1000"),
    ("She has 18 - 6 = 12 apples...", "12"),
    ("#### -$5", "-5"),
    ("#### .\nso 7", "7"),
]


def lm_eval_pick(text: str) -> str:
    """What lm-eval's filters take: gsm8k's strict "#### N", else gsm8k-cot's "The answer is N.", else
    gsm8k's flexible extract (the last number-like run)."""
    from lm_eval.filters.extraction import RegexFilter

    strict, cot = r"#### (\-?[0-9\.\,]+)", r"The answer is (\-?[0-9\.\,]+)."
    flexible = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
    for pattern, group in ((strict, 0), (cot, 0), (flexible, -1)):
        value = RegexFilter(pattern, group_select=group).apply([[text]], [{}])[0][0]
        if value != "[invalid]":
            return value
    return ""


@pytest.mark.parametrize("text, answer", TRICKY, ids=[t for t, _ in TRICKY])
def test_tricky_answers_equal_lm_evals_pick_as_numbers(text, answer):
    """Our prediction is the number lm-eval's filters pick, with its ignore regexes (",", "$", a final ".")
    applied, compared as numbers: lm-eval compares strings, so "3.50" fails against "3.5" there. Where its
    filters pick no number ("." after "####", a trailing "...") ours still finds the answer."""
    from decimal import Decimal, InvalidOperation

    assert extract(text) == extract(f"work\n#### {answer}") == answer
    picked = re.sub(r"\.$", "", lm_eval_pick(text).replace(",", "").replace("$", ""))
    try:
        number = Decimal(picked)
    except InvalidOperation:
        assert text in ("#### .\nso 7", "She has 18 - 6 = 12 apples...")
        return
    assert Decimal(extract(text)) == number


def test_prompt_and_bad_rows(tmp_path):
    task = load_gsm8k(write(tmp_path / "g"), shots=2)
    assert task.problems[0].answer == "6"
    assert task.prompt(task.problems[0]) == (
        f"Question: {TRAIN[0]['question']}\nAnswer: {TRAIN[0]['answer']}\n\n"
        f"Question: {TRAIN[1]['question']}\nAnswer: {TRAIN[1]['answer']}\n\n"
        f"Question: {TEST[0]['question']}\nAnswer:"
    )
    assert task.prompt(task.problems[0], 1).startswith(f"Question: {TRAIN[1]['question']}")
    with pytest.raises(DataError, match=r"test\.jsonl:1: answer must end with '#### N'"):
        load_gsm8k(write(tmp_path / "b", test=[{"question": "q", "answer": "6"}]), shots=1)
    with pytest.raises(DataError, match=r"train\.jsonl: 2 rows for --shots 8"):
        load_gsm8k(tmp_path / "g", shots=8)


def test_greedy_answers_match_transformers(loaded_hf, hf_model, tmp_path):
    task = load_gsm8k(write(tmp_path / "g"), shots=2)
    rows, shortened = run_gsm8k(loaded_hf.model, loaded_hf.tokenizer, task, max_new_tokens=6, batch_size=1)
    assert shortened == 0 and rows[0]["answer"] == "6"
    ids = loaded_hf.tokenizer(task.prompt(task.problems[0]))["input_ids"]
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[
            0, len(ids) :
        ].tolist()
    text = loaded_hf.tokenizer.decode(ref, skip_special_tokens=True)
    for stop in ("Question:", "\n\n"):
        text = text.split(stop)[0]
    assert rows[0]["text"].strip() == text.strip()
    assert rows[0]["pred"] == extract(text)


def test_shots_drop_to_fit_the_context_then_the_question_is_cut(tokenizer, tmp_path):
    from bessemer.eval.gsm8k import _fitted_request
    from bessemer.infer.sampling import SamplingParams

    task = load_gsm8k(write(tmp_path / "g"), shots=2)
    p, params = task.problems[0], SamplingParams(max_new_tokens=4, stop=["Question:"])
    lengths = [len(tokenizer.encode(task.prompt(p, n))) for n in (0, 1, 2)]
    req, shortened = _fitted_request(tokenizer, task, p, params, lengths[2] + 4)
    assert len(req.prompt_ids) == lengths[2] and not shortened
    req, shortened = _fitted_request(tokenizer, task, p, params, lengths[2] + 3)
    assert req.prompt_ids == tokenizer.encode(task.prompt(p, 1)) and shortened
    req, shortened = _fitted_request(tokenizer, task, p, params, lengths[0] + 1)
    assert req.prompt_ids == tokenizer.encode(task.prompt(p, 0))[-(lengths[0] - 3) :] and shortened
    assert req.params.stop == ["Question:"] and req.params.stop_token_ids == [tokenizer.eos_token_id]
