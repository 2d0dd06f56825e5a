"""The batched seeded draw against transformers' logits warpers (a chi-square test of the sampled frequencies),
the repetition penalty against transformers', and each row's draw against its own seed alone."""

from __future__ import annotations

import pytest
import torch

from bessemer.errors import ConfigError
from bessemer.infer.sampling import (
    BatchSampler,
    SamplingParams,
    apply_repetition_penalty,
    sample_next,
    seed_key,
    uniform,
)

DRAWS = 6000


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """What transformers samples from: temperature, then top-k, then top-p, then softmax."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(p.temperature)(None, logits[None].clone())
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(None, scores)
    if p.top_p < 1:
        scores = TopPLogitsWarper(p.top_p)(None, scores)
    return scores.softmax(-1)[0]


def draws(logits: torch.Tensor, p: SamplingParams, seed: int = 7, n: int = DRAWS) -> torch.Tensor:
    """n draws of one distribution: n rows with the same seed at positions 0..n-1."""
    return sample_next(logits.repeat(n, 1), [p] * n, torch.full((n,), seed_key(seed)), torch.arange(n))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.6),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.8, top_k=9, top_p=0.7),
    ],
    ids=["temperature", "cold", "top-k", "top-p", "top-k+top-p"],
)
def test_frequencies_match_transformers_warpers(params):
    logits = torch.randn(24, generator=torch.Generator().manual_seed(1)) * 1.5
    probs = reference_probs(logits, params)
    counts = torch.bincount(draws(logits, params), minlength=24).double()
    assert counts[probs == 0].sum() == 0  # nothing outside what the filters keep
    # chi-square over the tokens expected at least 5 times, the rarer ones pooled into one cell
    expected = probs.double() * DRAWS
    big = expected >= 5
    cells_expected = torch.cat([expected[big], expected[~big].sum()[None]])
    cells_counted = torch.cat([counts[big], counts[~big].sum()[None]])
    chi2 = ((cells_counted - cells_expected) ** 2 / cells_expected.clamp(min=1e-9)).sum()
    dof = int(big.sum()) - (0 if (~big & (probs > 0)).any() else 1)
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2.0), chi2 / 2))  # chi-square survival
    assert p_value > 1e-3, f"chi2 {float(chi2):.1f} on {dof} degrees of freedom"


def reference_inverse_cdf(
    probs: torch.Tensor, u: torch.Tensor, by_rank: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token whose cumulative probability first exceeds u [n], walking the tokens in descending order
    (by_rank) or in vocabulary order; and each u's distance to the nearest step of that staircase."""
    order = torch.sort(probs, descending=True, stable=True).indices if by_rank else torch.arange(len(probs))
    cum = probs.double()[order].cumsum(0)
    column = torch.searchsorted(cum, u.double()[:, None], right=True).squeeze(1).clamp(max=len(probs) - 1)
    return order[column], (cum[None] - u.double()[:, None]).abs().min(1).values


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.8, top_k=9, top_p=0.7),
        SamplingParams(temperature=1.0, top_k=1000),  # more than the vocabulary: every token
        SamplingParams(temperature=1.0, top_p=1e-9),  # the leading token alone
        SamplingParams(temperature=2.0, top_k=24, top_p=1.0),
    ],
    ids=["temperature", "top-k", "top-p", "top-k+top-p", "top-k>vocab", "top-p~0", "all-off"],
)
def test_each_draw_is_the_inverse_cdf_of_transformers_distribution(params):
    """Deterministic: row i draws with u_i = uniform(key, i); the token must be where u_i falls in the
    cumulative distribution transformers' warpers give (same walk order), for every u not at a step."""
    logits = torch.randn(24, generator=torch.Generator().manual_seed(3)) * 2
    n = 2000
    keys, positions = torch.full((n,), seed_key(11)), torch.arange(n)
    ours = sample_next(logits.repeat(n, 1), [params] * n, keys, positions)
    by_rank = params.top_k > 0 or params.top_p < 1
    ref, margin = reference_inverse_cdf(reference_probs(logits, params), uniform(keys, positions), by_rank)
    clear = margin > 1e-5  # rounding may put a u lying on a step either side
    assert clear.sum() > n * 0.99
    assert torch.equal(ours[clear], ref[clear])


@pytest.mark.parametrize("temperature", [1e-39, 1e-300])
@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_p": 0.5}], ids=["none", "top-k", "top-p"])
def test_a_vanishing_temperature_is_greedy_not_nan(temperature, filters):
    """logits / 1e-39 overflow float32 (and 1e-300 is 0 there): the draw must still be the argmax."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    params = [SamplingParams(temperature=temperature, **filters)] * 4
    out = sample_next(logits, params, torch.tensor([seed_key(i) for i in range(4)]), torch.arange(4))
    assert torch.equal(out, logits.argmax(-1))


def test_a_rows_draw_depends_on_its_seed_and_position_only():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(2))
    params = [
        SamplingParams(temperature=1.0, top_k=50, top_p=0.9),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(),  # greedy
        SamplingParams(temperature=1.2, top_k=3),
        SamplingParams(temperature=1.0, top_k=50, top_p=0.9),
    ]
    keys = torch.tensor([seed_key(s) for s in (5, 6, 7, 8, 9, 10)])
    positions = torch.tensor([3, 9, 4, 2, 7, 3])
    together = sample_next(logits, params, keys, positions)
    for i in range(6):  # alone, and behind rows of other kinds
        alone = sample_next(logits[i : i + 1], params[i : i + 1], keys[i : i + 1], positions[i : i + 1])
        order = [j for j in range(6) if j != i] + [i]
        last = sample_next(logits[order], [params[j] for j in order], keys[order], positions[order])[-1]
        assert int(alone) == int(together[i]) == int(last)
    assert int(together[3]) == int(logits[3].argmax())
    # the same seed repeats; another seed or position mostly does not
    p = SamplingParams(temperature=1.0)
    flat = torch.zeros(1000)
    first = draws(flat, p, seed=1, n=500)
    assert torch.equal(first, draws(flat, p, seed=1, n=500))
    assert (first != draws(flat, p, seed=2, n=500)).float().mean() > 0.9


@pytest.mark.parametrize("scale", [4.0, 0.1], ids=["nucleus-in-head", "nucleus-past-head"])
def test_top_p_from_the_head_of_the_row_equals_the_full_sort(monkeypatch, scale):
    import bessemer.infer.sampling as sampling

    # whole-number logits: large groups of exact ties, which must fall the same way on both paths
    logits = (torch.randn(2000, generator=torch.Generator().manual_seed(3)) * scale).round()
    params = SamplingParams(temperature=0.9, top_p=0.9)
    head = draws(logits, params, n=300)
    monkeypatch.setattr(sampling, "HEAD", 10**6)  # every row sorted whole
    assert torch.equal(head, draws(logits, params, n=300))


def test_uniform_is_uniform_and_keyed():
    u = uniform(torch.full((50000,), seed_key(1)), torch.arange(50000))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert seed_key(-1) != seed_key(2**63 - 1)


def test_greedy_rows_and_sampled_rows_together():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    params = [SamplingParams(), SamplingParams(temperature=0.5, top_k=1), SamplingParams(temperature=1.0)]
    out = sample_next(logits, params, torch.tensor([seed_key(3)] * 3), torch.tensor([0, 0, 0]))
    assert out.tolist()[:2] == [1, 0]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 4, 4, 9], [0, 2, 49, 30]])
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    assert torch.allclose(ours, ref)


def test_batch_sampler_penalises_only_its_penalised_rows():
    logits = torch.tensor([[5.0, 4.0, 0.0], [5.0, 4.0, 0.0]])
    seen = torch.tensor([[True, False, False], [True, False, False]])
    sampler = BatchSampler(2, torch.device("cpu"))
    sampler.set_row(0, SamplingParams(repetition_penalty=2.0), seed=0)  # greedy: 5 / 2 < 4
    sampler.set_row(1, SamplingParams(), seed=0)
    assert sampler.sample([0, 1], torch.tensor([0, 1]), logits, torch.tensor([0, 0]), seen).tolist() == [1, 0]


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
