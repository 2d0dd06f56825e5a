import pytest

from bessemer.data.handlers import Handler, Skip
from bessemer.errors import ConfigError, DataError


def answers(tok, ids, mask):
    out, cur = [], []
    for i, m in zip(list(ids) + [None], list(mask) + [0]):
        if m:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out


def test_pretrain_fields_and_specials(tokenizer):
    h = Handler("pretrain", tokenizer, fields=("title", "text"))
    [(ids, mask)] = h.encode([("f:line 1", {"title": "A title", "text": "Body text.", "other": 1})])
    assert mask is None
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:]) == "A title\n\nBody text."
    assert ids == tokenizer("A title\n\nBody text.")["input_ids"]


def test_pretrain_missing_column_lists_columns(tokenizer):
    h = Handler("pretrain", tokenizer)
    with pytest.raises(DataError, match=r"f\.jsonl:line 3: missing column 'text': the row has 'body', 'id'"):
        h.encode([("f.jsonl:line 3", {"body": "x", "id": 1})])
    [skip, empty, spaces, ok] = h.encode(
        [("a:line 1", {"body": "x"}), ("a:line 2", {"text": ""}), ("a:line 3", {"text": "  "}),
         ("a:line 4", {"text": "hi"})],
        skip_bad=True,
    )  # fmt: skip
    assert isinstance(skip, Skip) and skip.reason == "missing column 'text'" and skip.location == "a:line 1"
    assert isinstance(empty, Skip) and empty.reason == "empty text"
    # whitespace is text, as in Megatron's preprocess_data.py
    assert spaces == (tokenizer("  ")["input_ids"], None)
    assert ok[0][-1] == tokenizer("hi", add_special_tokens=False)["input_ids"][-1]


def test_alpaca_with_input_system_and_history(tokenizer):
    h = Handler("alpaca", tokenizer, template="vicuna")
    row = {
        "instruction": "Now multiply by 3.",
        "input": "",
        "output": "5 x 3 = 15.",
        "history": [["Add 2 and 3.", "2 + 3 = 5."]],
        "system": "You do arithmetic.",
    }
    [(ids, mask)] = h.encode([("a:1", row)])
    assert answers(tokenizer, ids, mask) == ["2 + 3 = 5.</s>", "5 x 3 = 15.</s>"]
    text = tokenizer.decode(ids)
    assert text.startswith("<s> You do arithmetic. USER: Add 2 and 3. ASSISTANT:")
    [(ids, _)] = h.encode([("a:2", {"instruction": "Sort.", "input": "3, 1", "output": "1, 3"})])
    assert "USER: Sort.\n\n3, 1 ASSISTANT:" in tokenizer.decode(ids)


def test_sharegpt_learns_every_assistant_turn(tokenizer):
    h = Handler("sharegpt", tokenizer, template="chatml")
    row = {
        "conversations": [
            {"from": "system", "value": "Be kind."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Goodbye."},
        ]
    }
    [(ids, mask)] = h.encode([("s:1", row)])
    assert answers(tokenizer, ids, mask) == ["Hello.<|im_end|>", "Goodbye.<|im_end|>"]


def test_sharegpt_drops_answers_before_the_first_question(tokenizer):
    # ShareGPT V3 splits long conversations: about a third of its pieces open with a gpt turn (the answer to a
    # question in the previous piece); FastChat drops it, and so do we, instead of learning an answer to nothing
    h = Handler("sharegpt", tokenizer, template="chatml")
    turns = [{"from": "gpt", "value": "Orphan answer."}, {"from": "human", "value": "Hi"}]
    [(ids, mask)] = h.encode([("s:1", {"conversations": [*turns, {"from": "gpt", "value": "Hello."}]})])
    assert answers(tokenizer, ids, mask) == ["Hello.<|im_end|>"]
    assert "Orphan" not in tokenizer.decode(ids)
    rows = [
        ("s:2", {"conversations": []}),
        ("s:3", {"conversations": [{"from": "gpt", "value": "Orphan answer."}]}),
        ("s:4", {"conversations": [*turns, {"from": "gpt", "value": "  "}]}),  # the only answer is empty
    ]
    empty, orphan, blank = h.encode(rows, skip_bad=True)
    assert (empty.reason, orphan.reason, blank.reason) == (
        "empty conversation",
        "no answer tokens",
        "no answer tokens",
    )
    with pytest.raises(
        DataError, match="s:2: empty conversation: 'conversations' holds no turns; .* --skip-bad"
    ):
        h.encode(rows[:1])


def test_messages(tokenizer):
    h = Handler("messages", tokenizer, template="llama2")
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    [(ids, mask)] = h.encode([("m:1", row)])
    assert answers(tokenizer, ids, mask) == ["Hello.</s>"]


def test_sft_errors_name_location_and_columns(tokenizer):
    h = Handler("sharegpt", tokenizer, template="vicuna")
    with pytest.raises(DataError, match=r"s:4: missing column 'conversations': the row has 'messages'"):
        h.encode([("s:4", {"messages": []})])
    with pytest.raises(DataError, match=r"s:5: bad conversations: turn 0 is from 'robot'"):
        h.encode([("s:5", {"conversations": [{"from": "robot", "value": "x"}]})])
    with pytest.raises(DataError, match=r"a:1: missing column 'output': the row has 'instruction'"):
        Handler("alpaca", tokenizer).encode([("a:1", {"instruction": "x"})])
    with pytest.raises(DataError, match=r"m:2: bad conversation: message 0 has role 'tool'"):
        Handler("messages", tokenizer).encode([("m:2", {"messages": [{"role": "tool", "content": "x"}]})])
    [skip] = Handler("messages", tokenizer).encode(
        [("m:3", {"messages": [{"role": "user", "content": "x"}]})], skip_bad=True
    )
    assert skip.reason == "no answer tokens"
    with pytest.raises(ConfigError, match="unknown template 'zzz'"):
        Handler("alpaca", tokenizer, template="zzz")
    with pytest.raises(DataError, match="handler 'nope' is unknown; use one of: pretrain, alpaca"):
        Handler("nope", tokenizer)


CALL = {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "w"}}]}


def test_messages_text_parts_and_nested_text_columns(tokenizer):
    # OpenAI-style content parts: text parts concatenated, as chat templates that take them render them
    h = Handler("messages", tokenizer, template="chatml")
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    plain = {
        "messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]
    }
    listed = {"messages": [{"role": "user", "content": parts}, plain["messages"][1]]}
    assert h.encode([("m:1", listed)]) == h.encode([("m:1", plain)])
    # a parquet struct or JSON object column: "meta.text"; a column really named "a.b" is taken as it is
    p = Handler("pretrain", tokenizer, fields=("meta.text", "a.b"))
    [(ids, _)] = p.encode([("p:1", {"meta": {"text": "Nested text."}, "a.b": "Flat."})])
    assert ids == tokenizer("Nested text.\n\nFlat.")["input_ids"]
    with pytest.raises(
        DataError, match=r"p:2: missing column 'meta.text': the row has 'meta', 'a.b'; choose"
    ):
        p.encode([("p:2", {"meta": {"txt": "x"}, "a.b": "y"})])


@pytest.mark.parametrize(
    "handler,row,error",
    [
        ("messages", {"messages": "hi"}, "bad messages: must be a list"),
        ("messages", {"messages": [{"role": "user", "content": {"a": 1}}]}, "bad content: .* not an object"),
        ("messages", {"messages": [{"role": "user", "content": "\ud800"}]}, "bad content: not valid Unicode"),
        (
            "messages",
            {"messages": [["user", "x"]]},
            "bad messages: message 0 must be a dict with 'role' and 'content'",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "x" * 100, "value": "v"}]},
            r"bad conversations: turn 0 is from 'x+\.\.\.; use human",
        ),
        ("sharegpt", {"conversations": [{"from": "human", "value": 5}]}, "bad value: .* not a number"),
        ("alpaca", {"instruction": True, "output": "x"}, "bad instruction: .* not true/false"),
        ("alpaca", {"instruction": "a", "output": "x", "history": [[1, 2]]}, "bad history: .* not a number"),
        (
            "alpaca",
            {"instruction": "a", "output": ["x"]},
            "bad output: .* not a list; fix the row or pass --skip",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "Weather?"}, {**CALL, "content": "Let me look."}]},
            "bad messages: message 1 calls tools, which the chat templates here do not render; remove the row",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "bad content: message 0 holds a 'image_url' part; only text parts can be trained; remove the row",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "{}"}]},
            r"bad conversations: turn 1 is a tool turn \('observation'\), which the chat templates here do not",
        ),
    ],
)
def test_sft_fields_must_have_the_documented_structure(tokenizer, handler, row, error):
    with pytest.raises(DataError, match=rf"f:line 7: {error}"):
        Handler(handler, tokenizer, template="chatml").encode([("f:line 7", row)])
    [skip] = Handler(handler, tokenizer, template="chatml").encode([("f:line 7", row)], skip_bad=True)
    assert isinstance(skip, Skip) and skip.location == "f:line 7"
