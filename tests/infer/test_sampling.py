"""Each sampling filter against its definition, and the repetition penalty against transformers'."""

from __future__ import annotations

import pytest
import torch

from bessemer.errors import ConfigError
from bessemer.infer.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    sample_next,
)


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    kept = filter_top_k(logits, 2)
    assert torch.isfinite(kept).tolist() == [False, True, False, True, False]
    assert torch.equal(filter_top_k(logits, 0), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(filter_top_p(logits, 0.75)).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [True, True, True, False]
    shuffled = logits[[2, 0, 3, 1]]
    assert torch.isfinite(filter_top_p(shuffled, 0.75)).tolist() == [False, True, False, True]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 4, 4, 9], [0, 2, 49, 30]])
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    assert torch.allclose(ours, ref)


def test_sampling_follows_the_distribution_and_the_seed():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1e9]]).repeat(1, 1)
    params = [SamplingParams(temperature=1.0, seed=0)]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, params, [gen]) for _ in range(3000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=0.03)
    again = torch.Generator().manual_seed(0)
    assert torch.equal(
        draws[:50], torch.stack([sample_next(logits, params, [again]) for _ in range(50)]).flatten()
    )


def test_greedy_rows_and_sampled_rows_together():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    params = [SamplingParams(), SamplingParams(temperature=0.5, top_k=1, seed=3)]
    out = sample_next(logits, params, [None, torch.Generator().manual_seed(3)])
    assert out.tolist() == [1, 0]


@pytest.mark.parametrize(
    "kw",
    [{"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"repetition_penalty": 0}, {"max_new_tokens": -1}],
)
def test_bad_params_name_the_key(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        SamplingParams(**kw)
