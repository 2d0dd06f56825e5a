"""SFT data with SmolLM2's own chat template: ids equal transformers' apply_chat_template, masks cover the answers."""

from __future__ import annotations

import pytest

from bessemer.data.handlers import Handler

pytestmark = pytest.mark.real


def test_sharegpt_piece_opening_with_an_answer(smollm2):
    # a third of ShareGPT V3's pieces open with a gpt turn; the chat_template path refused them all as "empty".
    # Contents go to the model's own template as they are, whitespace at their ends included, as transformers does
    from transformers import AutoTokenizer

    from bessemer.tokenizer import load_tokenizer

    row = {
        "conversations": [
            {"from": "gpt", "value": "The end of an earlier answer."},
            {"from": "human", "value": "Rewrite it  in C++ "},
            {"from": "gpt", "value": " Here it is:\n```cpp\nint main() {}\n```"},
            {"from": "human", "value": "continue"},
            {"from": "gpt", "value": "Done."},
        ]
    }
    tok = load_tokenizer(smollm2.hf)
    [(ids, mask)] = Handler("sharegpt", tok).encode([("s.json:item 5", row)])
    messages = [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
        for t in row["conversations"][1:]
    ]
    reference = AutoTokenizer.from_pretrained(smollm2.hf)
    assert ids == reference.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    learned = [reference.decode([t for t, m in zip(ids, mask) if m])]
    assert learned == [" Here it is:\n```cpp\nint main() {}\n```<|im_end|>Done.<|im_end|>"]
