"""Each sampling filter against its definition, the repetition penalty against transformers', and the
batched seeded draw against the distribution it samples from."""

from __future__ import annotations

import pytest
import torch

from bessemer.errors import ConfigError
from bessemer.infer.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    exponential_noise,
    filter_top_k_top_p,
    sample_next,
    seed_key,
)


def kept(logits, k=0, p=1.0):
    rows = logits.view(-1, logits.shape[-1])
    n = rows.shape[0]
    out = filter_top_k_top_p(rows, torch.full((n,), k), torch.full((n,), p))
    return torch.isfinite(out).tolist()


def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = filter_top_k_top_p(logits, torch.tensor([2, 0]), torch.ones(2))
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False], [True] * 5]
    assert torch.equal(out[1], logits[1]) and out[0, 1] == 5.0


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert kept(logits, p=0.5) == [[True, False, False, False]]
    assert kept(logits, p=0.75) == [[True, True, False, False]]
    assert kept(logits, p=0.81) == [[True, True, True, False]]
    assert kept(logits[[2, 0, 3, 1]], p=0.75) == [[False, True, False, True]]
    # top-p applies to the top-k renormalised: 0.5/0.95 + 0.3/0.95 already reaches 0.81
    assert kept(logits, k=3, p=0.81) == [[True, True, False, False]]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 4, 4, 9], [0, 2, 49, 30]])
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    assert torch.allclose(ours, ref)


def draw(logits, temperature, keys, positions, top_k=0, top_p=1.0):
    n = logits.shape[0]
    return sample_next(
        logits,
        torch.full((n,), float(temperature)),
        torch.full((n,), top_k),
        torch.full((n,), float(top_p)),
        keys,
        positions,
    )


def test_the_draw_follows_the_distribution_and_repeats_per_seed():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.log().repeat(4000, 1)
    keys = torch.full((4000,), seed_key(7))
    tokens = draw(logits, 1.0, keys, torch.arange(4000))
    freq = torch.bincount(tokens, minlength=5).float() / 4000
    assert torch.allclose(freq, probs, atol=0.025)  # 4000 draws: sd of a frequency <= 0.008
    assert torch.equal(tokens, draw(logits, 1.0, keys, torch.arange(4000)))  # same seed and positions
    other = draw(logits, 1.0, torch.full((4000,), seed_key(8)), torch.arange(4000))
    assert (other != tokens).float().mean() > 0.4
    hot = draw(logits, 2.0, keys, torch.arange(4000))  # temperature 2 flattens: p ~ sqrt(p)
    want = probs.sqrt() / probs.sqrt().sum()
    assert torch.allclose(torch.bincount(hot, minlength=5).float() / 4000, want, atol=0.025)


def test_noise_is_exponential_and_a_function_of_key_and_position():
    noise = exponential_noise(torch.tensor([seed_key(1), seed_key(2)]), torch.tensor([5, 5]), 50000)
    assert abs(float(noise.mean()) - 1.0) < 0.02 and abs(float(noise.var()) - 1.0) < 0.05
    again = exponential_noise(torch.tensor([seed_key(2)]), torch.tensor([5]), 50000)
    assert torch.equal(again[0], noise[1])  # a row's draw does not depend on its neighbours
    assert seed_key(-1) != seed_key(2**63 - 1)


def test_greedy_rows_and_sampled_rows_together():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    out = sample_next(
        logits,
        torch.tensor([0.0, 0.5, 1.0]),
        torch.tensor([0, 1, 0]),
        torch.tensor([1.0, 1.0, 0.5]),
        torch.tensor([seed_key(3)] * 3),
        torch.tensor([0, 0, 0]),
    )
    assert out.tolist() == [1, 0, 2]


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_k": -2},
        {"repetition_penalty": 0},
        {"max_new_tokens": -1},
    ],
)
def test_bad_params_name_the_key(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        SamplingParams(**kw)
