"""`prepare --handler preference`: pairs rendered with the SFT templates, answer-only masks, prompt-end truncation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bessemer.cli.main import main
from bessemer.data.indexed import IndexedDataset, mask_prefix
from bessemer.data.preference import prepare_preference
from bessemer.errors import DataError
from bessemer.templates import encode_chat

TEXT_ROW = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not say."}
CONVERSATION = {
    "chosen": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Add 2 and 2."},
        {"role": "assistant", "content": "4"},
    ],
    "rejected": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Add 2 and 2."},
        {"role": "assistant", "content": "22, obviously."},
    ],
}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_are_two_documents_with_answer_only_masks(tmp_path, demo_tokenizer_dir, tokenizer):
    src = write_rows(tmp_path / "pairs.jsonl", [TEXT_ROW, CONVERSATION])
    meta = prepare_preference([str(src)], str(tmp_path / "pref"), str(demo_tokenizer_dir), template="vicuna")
    assert meta["pairs"] == 2 and meta["handler"] == "preference" and meta["truncated"] == 0
    docs, masks = IndexedDataset(tmp_path / "pref"), IndexedDataset(mask_prefix(tmp_path / "pref"))
    assert len(docs) == 4
    conv = CONVERSATION["chosen"]
    ids, mask = encode_chat(tokenizer, "vicuna", conv)
    assert docs[2].tolist() == ids  # the SFT rendering of the whole conversation
    final = mask.index(1, mask.index(0, mask.index(1)))  # start of the second answer
    assert masks[2].tolist() == [0] * final + [1] * (len(ids) - final)  # earlier answers are prompt
    rejected, _ = encode_chat(tokenizer, "vicuna", CONVERSATION["rejected"])
    assert docs[3].tolist() == rejected and docs[3][:final].tolist() == ids[:final]
    text_ids, _ = encode_chat(
        tokenizer,
        "vicuna",
        [
            {"role": "user", "content": TEXT_ROW["prompt"]},
            {"role": "assistant", "content": TEXT_ROW["chosen"]},
        ],
    )
    assert docs[0].tolist() == text_ids


def test_truncation_keeps_the_prompt_end_and_counts_pairs(tmp_path, demo_tokenizer_dir):
    long = {**TEXT_ROW, "prompt": "word " * 200 + "the question is here."}
    src = write_rows(tmp_path / "pairs.jsonl", [long, TEXT_ROW])
    full = prepare_preference([str(src)], str(tmp_path / "full"), str(demo_tokenizer_dir), template="vicuna")
    cut = prepare_preference(
        [str(src)], str(tmp_path / "cut"), str(demo_tokenizer_dir), template="vicuna", max_length=48
    )
    assert full["truncated"] == 0 and cut["truncated"] == 1
    a, b = IndexedDataset(tmp_path / "full"), IndexedDataset(tmp_path / "cut")
    ma, mb = IndexedDataset(mask_prefix(tmp_path / "full")), IndexedDataset(mask_prefix(tmp_path / "cut"))
    assert len(b[0]) <= 48
    answer = int(np.asarray(mb[0]).sum())
    assert answer == int(np.asarray(ma[0]).sum())  # the short answer is whole
    assert b[0].tolist() == a[0][len(a[0]) - len(b[0]) :].tolist()  # the prompt's end is kept
    assert b[2].tolist() == a[2].tolist()  # the short pair is untouched


def test_missing_rejected_names_file_and_line_and_writes_nothing(tmp_path, demo_tokenizer_dir, capsys):
    src = write_rows(tmp_path / "pairs.jsonl", [TEXT_ROW, {"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:line 2: missing 'rejected'"):
        prepare_preference([str(src)], str(tmp_path / "out"), str(demo_tokenizer_dir))
    assert not list(tmp_path.glob("out*"))
    args = ["prepare", "--handler", "preference", "--input", str(src), "--tokenizer", str(demo_tokenizer_dir)]
    assert main([*args, "--out", str(tmp_path / "out")]) != 0
    assert "missing 'rejected'" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "ok"), "--skip-bad", "--shard-size", "1"]) != 0
    assert "--shard-size: not used by --handler preference; drop them" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "ok"), "--skip-bad"]) == 0
    assert json.loads((tmp_path / "ok.meta.json").read_text())["pairs"] == 1
    no_chosen = write_rows(tmp_path / "c.jsonl", [{"prompt": "p", "rejected": "r"}])
    with pytest.raises(DataError, match=r"c.jsonl:line 1: missing 'chosen'; preference rows need chosen and"):
        prepare_preference([str(no_chosen)], str(tmp_path / "c"), str(demo_tokenizer_dir))
    assert not list(tmp_path.glob("c.*bin"))


@pytest.mark.pypi
def test_conversational_pairs_equal_trl(tmp_path):
    # TRL's two conversational layouts: an explicit prompt (the answers alone in chosen/rejected), and an
    # implicit one; ids and completion masks are those of TRL's DPOTrainer tokenisation with the same template
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, common_prefix_length, extract_prompt

    from tests.test_templates import real_tokenizer_dir

    folder = real_tokenizer_dir("qwen", None, tmp_path)
    explicit = {
        "prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Add 2 and 2."},
        ],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "22, obviously."}],
    }
    src = write_rows(tmp_path / "pairs.jsonl", [explicit, CONVERSATION])
    meta = prepare_preference([str(src)], str(tmp_path / "pref"), str(folder), template="tokenizer")
    assert meta["pairs"] == 2
    docs, masks = IndexedDataset(tmp_path / "pref"), IndexedDataset(mask_prefix(tmp_path / "pref"))
    ref = AutoTokenizer.from_pretrained(folder)
    for k, row in enumerate([explicit, extract_prompt(CONVERSATION)]):
        prompt = _tokenize(ref, row["prompt"], add_generation_prompt=True)["input_ids"]
        full = [_tokenize(ref, row["prompt"] + row[key])["input_ids"] for key in ("chosen", "rejected")]
        n = min(common_prefix_length(prompt, f) for f in full)
        for j, ids in enumerate(full):
            assert docs[2 * k + j].tolist() == ids
            assert masks[2 * k + j].tolist() == [0] * n + [1] * (len(ids) - n)
