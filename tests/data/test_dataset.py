import json

import numpy as np
import pytest
import torch

from bessemer.config.schema import DataSection
from bessemer.data.dataset import PackedBatches, blend_pattern, meta_path, split_range
from bessemer.errors import ConfigError, DataError
from tests.data.conftest import numbered_docs, write_dataset


@pytest.fixture
def one(tmp_path):
    return write_dataset(tmp_path / "one", numbered_docs(400, seed=1))


@pytest.fixture
def two(tmp_path):
    a = write_dataset(tmp_path / "a", numbered_docs(300, seed=2))
    b = write_dataset(tmp_path / "b", numbered_docs(300, seed=3, base=30000))
    return a, b


def make(paths, **kw):
    data_kw = {k: kw.pop(k) for k in ("weights", "split", "reset_positions") if k in kw}
    args = {"seq_len": 16, "micro_batch_size": 2, "global_batch_size": 8, "seed": 7, **kw}
    return PackedBatches(DataSection(paths=list(paths), **data_kw), **args)


def take(pb, n):
    return [next(pb) for _ in range(n)]


def same(xs, ys):
    return len(xs) == len(ys) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys)
    )


def test_batch_shapes_and_shift(one):
    b = next(make([one]))
    assert set(b) == {"tokens", "labels", "positions"}
    for v in b.values():
        assert v.shape == (2, 16) and v.dtype == torch.int64
    assert torch.equal(b["labels"][:, :-1], b["tokens"][:, 1:])
    assert torch.equal(b["positions"][0], torch.arange(16))


def test_epoch_covers_stream_without_overlap(one):
    pb = make([one], split="1")
    src = pb._sources[0]
    seen = np.concatenate([pb.sample(g)[0][:-1] for g in range(src.samples_per_epoch)])
    assert len(seen) == src.samples_per_epoch * 16 == len(set(seen.tolist()))
    assert src.samples_per_epoch == (src.num_tokens - 1) // 16
    # within a sample, tokens are consecutive except at document starts
    toks, _, starts, _ = pb.sample(3)
    breaks = [k for k in range(1, 17) if toks[k] != toks[k - 1] + 1]
    assert set(breaks) <= set(starts)


def test_deterministic_and_seeded(one):
    assert same(take(make([one]), 5), take(make([one]), 5))
    assert not same(take(make([one]), 5), take(make([one], seed=8), 5))


@pytest.mark.parametrize("k", [0, 3, 4, 9])
def test_resume_is_exact(one, k):
    ref = make([one], global_batch_size=8, micro_batch_size=2)
    expected = take(ref, k + 6)[k:]
    first = make([one])
    take(first, k)
    state = first.state_dict()
    resumed = make([one])
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert same(take(resumed, 6), expected)


def test_layout_independence(two):
    steps = 3
    G = 8
    ref = [torch.cat([b["tokens"] for b in take(make(two, micro_batch_size=2), G // 2)]) for _ in range(1)]
    single = make(two, micro_batch_size=2)
    per_step_1 = [torch.cat([b["tokens"] for b in take(single, G // 2)]) for _ in range(steps)]
    assert torch.equal(per_step_1[0], ref[0])
    for dp_size, mbs in [(2, 2), (4, 1), (2, 4), (8, 1)]:
        ranks = [make(two, micro_batch_size=mbs, dp_rank=r, dp_size=dp_size) for r in range(dp_size)]
        n_micro = G // dp_size // mbs
        for s in range(steps):
            got = torch.cat([b["tokens"] for r in ranks for b in take(r, n_micro)])
            assert torch.equal(got, per_step_1[s]), (dp_size, mbs, s)


def test_resume_on_other_layout(two):
    single = make(two)
    take(single, 8)  # two steps of 4 micro-batches
    state = single.state_dict()
    expected = torch.cat([b["tokens"] for b in take(single, 4)])
    ranks = [make(two, dp_rank=r, dp_size=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    got = torch.cat([b["tokens"] for r in ranks for b in take(r, 2)])
    assert torch.equal(got, expected)
    mid = make(two)
    take(mid, 1)
    with pytest.raises(DataError, match="middle of a step"):
        make(two, dp_size=2).load_state_dict(mid.state_dict())
    with pytest.raises(DataError, match="seed=7"):
        make(two, seed=9).load_state_dict(state)


def test_blending_proportions(two):
    pb = make(two, weights=[0.75, 0.25])
    n = 4000
    from_b = sum(int(pb.sample(g)[0][0] >= 30000) for g in range(n))
    assert abs(from_b / n - 0.25) < 0.005
    # empty weights: by size in tokens
    pb = make(two)
    sizes = [s.num_tokens for s in pb._sources]
    from_b = sum(int(pb.sample(g)[0][0] >= 30000) for g in range(n))
    assert abs(from_b / n - sizes[1] / sum(sizes)) < 0.005


def test_blend_pattern_even():
    owner, rank, counts = blend_pattern([3, 1], slots=8)
    assert counts.tolist() == [6, 2]
    assert owner.tolist().count(1) == 2
    assert sorted(rank[owner == 0].tolist()) == list(range(6))
    with pytest.raises(ConfigError, match="weight"):
        blend_pattern([1, 1e-9], slots=1024)


def test_splits_are_disjoint(one):
    seen = {}
    for which in ("train", "valid", "test"):
        pb = PackedBatches(
            DataSection(paths=[one], split="80,10,10"),
            seq_len=8,
            micro_batch_size=1,
            global_batch_size=1,
            seed=1,
            split=which,
        )
        n = pb._sources[0].samples_per_epoch
        seen[which] = {int(t) for g in range(n) for t in pb.sample(g)[0]}
    assert not seen["train"] & seen["valid"]
    assert not seen["train"] & seen["test"]
    assert not seen["valid"] & seen["test"]
    assert split_range(400, "80,10,10", "valid") == (320, 360)
    assert split_range(10, "1", "test") == (10, 10)


def test_reset_positions_and_doc_ids(one):
    b = next(make([one], reset_positions=True, seq_len=64))
    for row in range(2):
        toks, pos, ids = b["tokens"][row], b["positions"][row], b["doc_ids"][row]
        for k in range(1, 64):
            new_doc = toks[k] != toks[k - 1] + 1
            if new_doc:
                assert pos[k] == 0 and ids[k] == ids[k - 1] + 1
            else:
                assert pos[k] == pos[k - 1] + 1 and ids[k] == ids[k - 1]
        assert pos[0] == 0 and ids[0] == 0


def test_loss_mask_sets_ignore_index(tmp_path):
    docs = numbered_docs(50, seed=4)
    masks = [(d % 3 == 0).astype(np.uint8) for d in docs]
    prefix = write_dataset(tmp_path / "sft", docs, masks=masks)
    b = next(make([prefix]))
    labels = b["labels"]
    nxt = torch.cat([b["tokens"][:, 1:], labels[:, -1:]], dim=1)
    learn = labels != -100
    assert learn.any() and (~learn).any()
    assert torch.equal(labels[learn], nxt[learn])
    assert bool(((nxt[learn] % 3) == 0).all()) and bool(((nxt[~learn] % 3) != 0).all())


def test_missing_dataset_names_prefix(tmp_path):
    with pytest.raises(DataError, match=r"nope\.(bin|idx).*bessemer prepare"):
        make([str(tmp_path / "nope")])


def test_fingerprint_mismatch(one):
    meta_path(one).write_text(json.dumps({"tokenizer_fingerprint": "aaaa", "tokenizer": "/tok/a"}))
    with pytest.raises(DataError, match=r"one: prepared with tokenizer aaaa .*bbbb.*bessemer prepare"):
        make([one], tokenizer_fingerprint="bbbb")
    make([one], tokenizer_fingerprint="aaaa")


def test_token_ids_beyond_vocab(one, tmp_path):
    with pytest.raises(DataError, match=r"one\.bin: token id \d+ >= vocab_size 100"):
        next(make([one], vocab_size=100))
    meta_path(one).write_text(json.dumps({"max_token_id": 31999}))
    with pytest.raises(DataError, match="31999 >= the model's vocab_size 1000"):
        make([one], vocab_size=1000)


def test_too_few_tokens(tmp_path):
    tiny = write_dataset(tmp_path / "tiny", [[1, 2, 3], [4, 5]])
    with pytest.raises(DataError, match=r"tiny: the train split holds 5 tokens.*seq_len\+1=17"):
        make([tiny], split="1")


def test_bad_config():
    with pytest.raises(ConfigError, match="data.paths"):
        make([])
    with pytest.raises(ConfigError, match="global_batch_size=6"):
        make(["x"], global_batch_size=6, micro_batch_size=4)
