"""build_request's context check, its truncation for evaluation, and the stop ids it adds."""

from __future__ import annotations

import pytest

from bessemer.infer.request import CONTEXT_EXCEEDED, RequestError, build_request
from bessemer.infer.sampling import SamplingParams

TEXT = "The quick brown fox jumps over the lazy dog. " * 4


def test_a_prompt_too_long_is_refused_or_cut_from_the_left(tokenizer):
    ids = tokenizer.encode(TEXT)
    params = SamplingParams(max_new_tokens=8, stop=["</s>", "dog"])
    whole = build_request(tokenizer, None, params, context_len=len(ids) + 8, prompt=TEXT, truncate=True)
    assert whole.prompt_ids == ids and not whole.truncated
    with pytest.raises(RequestError, match="exceeds the context") as info:
        build_request(tokenizer, None, params, context_len=len(ids) + 7, prompt=TEXT)
    assert info.value.code == CONTEXT_EXCEEDED and info.value.param == "max_tokens"
    cut = build_request(tokenizer, None, params, context_len=20, prompt=TEXT, truncate=True)
    assert cut.prompt_ids == ids[-12:] and cut.truncated and cut.params.max_new_tokens == 8
    # the eos id, and "</s>" (a special token, which decoding hides) as an id as well as a string
    assert cut.params.stop_token_ids == [tokenizer.eos_token_id] and cut.params.stop == ["</s>", "dog"]


def test_truncation_needs_room_for_one_prompt_token(tokenizer):
    with pytest.raises(RequestError, match="leaves no room for a prompt") as info:
        build_request(
            tokenizer, None, SamplingParams(max_new_tokens=16), context_len=16, prompt=TEXT, truncate=True
        )
    assert info.value.param == "max_tokens"
