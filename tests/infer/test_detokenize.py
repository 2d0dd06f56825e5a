"""Streaming text: complete characters only (Chinese through byte fallback), stop strings never leak."""

from __future__ import annotations

from bessemer.infer.detokenize import IncrementalDetokenizer, StopMatcher

CHINESE = "你好，世界！今天天气很好。我们用中文测试流式输出：鬱龘齉。"


def stream_text(tokenizer, ids: list[int], prompt_ids=None) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    chunks = [detok.add(i) for i in ids]
    return [*chunks, detok.flush()]


def test_chinese_streams_whole_characters(tokenizer):
    ids = tokenizer.encode(CHINESE, add_special_tokens=False)
    # the rare characters are spelled in byte tokens, several per character
    byte_tokens = [t for t in tokenizer.convert_ids_to_tokens(ids) if t.startswith("<0x")]
    assert len(byte_tokens) >= 3
    chunks = stream_text(tokenizer, ids)
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == tokenizer.decode(ids) == CHINESE
    assert any(c == "" for c in chunks)  # some steps held back an unfinished character


def test_spaces_after_the_prompt_survive(tokenizer):
    prompt = tokenizer.encode("Once upon a time")
    ids = tokenizer.encode("Once upon a time there was a tiny model.", add_special_tokens=True)[len(prompt) :]
    text = "".join(stream_text(tokenizer, ids, prompt))
    assert text == " there was a tiny model."


def test_mixed_text_matches_whole_decode(tokenizer):
    text = "Mixed: café, naïve, 中文 and emoji 🙂 done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    chunks = stream_text(tokenizer, ids)
    assert "".join(chunks) == tokenizer.decode(ids)
    assert all("\ufffd" not in c for c in chunks)


def test_unfinished_character_at_the_end_is_flushed(tokenizer):
    ids = tokenizer.encode("鬱", add_special_tokens=False)
    chunks = stream_text(tokenizer, ids[:-1])
    assert chunks[:-1] == [""] * (len(ids) - 1)
    assert chunks[-1].endswith("\ufffd")


def test_stop_string_split_across_pieces_is_held_then_cut():
    m = StopMatcher(["<|im_end|>", "USER:"])
    out = [m.push(p) for p in ["Hello", " wor", "ld<|im", "_e", "nd|>tail"]]
    assert out == ["Hello", " wor", "ld", "", ""]
    assert m.stopped and m.flush() == ""


def test_held_text_that_was_not_a_stop_is_released():
    m = StopMatcher(["USER:"])
    assert m.push("ask the US") == "ask the "
    assert m.push("A") == "USA"
    assert m.push(" and US") == " and "
    assert m.flush() == "US"
    assert not m.stopped
