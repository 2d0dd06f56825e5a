"""Decoding through the KV cache gives the logits of recomputing the whole sequence."""

import pytest
import torch

from bessemer.infer.kv_cache import KVCache, PagedKVCache
from bessemer.models import ModelConfig, build_model


def _contiguous(cfg: ModelConfig):
    cache = KVCache(cfg, batch_size=2, max_len=32)
    return lambda: cache


def _paged(cfg: ModelConfig):
    cache = PagedKVCache(cfg, num_blocks=12, block_size=4, max_batch=3, max_len=32)
    # scattered, out-of-order blocks: row 0 of the batch is cache row 2, row 1 is cache row 0
    cache.set_table(2, [7, 1, 4, 10, 3])
    cache.set_table(0, [2, 9, 0, 5, 11])
    return lambda: cache.rows([2, 0])


@pytest.mark.parametrize("cache_kind", [_contiguous, _paged], ids=["contiguous", "paged"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"n_kv_heads": 2, "sliding_window": 5}, {"position": "alibi", "norm_head": True}],
    ids=["llama", "mistral-window", "baichuan-alibi"],
)
def test_cached_steps_equal_full_recompute(kw, cache_kind):
    cfg = ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64, **kw)
    model = build_model(cfg, seed=0).eval()
    tokens = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(0))
    cache = cache_kind(cfg)  # the cache the two batch rows decode through, as each step sees it
    with torch.no_grad():
        full = model(tokens)
        pos = torch.arange(12).expand(2, 12)
        steps = [model(tokens[:, :12], positions=pos, cache=cache())]
        for t in range(12, 20):
            steps.append(model(tokens[:, t : t + 1], positions=torch.full((2, 1), t), cache=cache()))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_paged_rows_share_a_prefix_block_and_prefill_only_the_rest():
    cfg = ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64)
    model = build_model(cfg, seed=0).eval()
    prefix = torch.randint(0, 101, (1, 8), generator=torch.Generator().manual_seed(1))
    a, b = torch.cat([prefix, torch.tensor([[5, 6, 7]])], 1), torch.cat([prefix, torch.tensor([[9]])], 1)
    cache = PagedKVCache(cfg, num_blocks=8, block_size=4, max_batch=2, max_len=16)
    cache.set_table(0, [3, 5, 0])
    cache.set_table(1, [3, 5, 6])  # the two prefix blocks are row 0's
    with torch.no_grad():
        model(a, cache=cache.rows([0]))
        # row 1 runs only its own token, at position 8, over the shared blocks
        out = model(b[:, 8:], positions=torch.tensor([[8]]), cache=cache.rows([1]))
        assert torch.allclose(out[0, -1], model(b)[0, -1], atol=1e-5)


def test_rows_at_different_positions_with_padding():
    cfg = ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64)
    model = build_model(cfg, seed=0).eval()
    a, b = torch.randint(0, 101, (1, 9)), torch.randint(0, 101, (1, 5))
    cache = KVCache(cfg, batch_size=2, max_len=16)
    # right-pad the shorter prompt: padding has position -1 and is never attended to
    tokens = torch.cat([a, torch.cat([b, torch.zeros(1, 4, dtype=torch.long)], 1)])
    pos = torch.stack([torch.arange(9), torch.tensor([0, 1, 2, 3, 4, -1, -1, -1, -1])])
    with torch.no_grad():
        out = model(tokens, positions=pos, cache=cache)
        assert torch.allclose(out[0], model(a)[0], atol=1e-5)
        assert torch.allclose(out[1, :5], model(b)[0], atol=1e-5)
        nxt = torch.tensor([[7], [8]])
        step = model(nxt, positions=torch.tensor([[9], [5]]), cache=cache)
        assert torch.allclose(step[0, 0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-5)
        assert torch.allclose(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5)


def test_bucketed_reads_and_row_views_match_the_full_cache():
    cfg = ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=256)
    model = build_model(cfg, seed=0).eval()
    tokens = torch.randint(0, 101, (3, 12), generator=torch.Generator().manual_seed(0))
    full = KVCache(cfg, batch_size=3, max_len=200)
    bucketed = KVCache(cfg, batch_size=3, max_len=200, bucket=8)
    with torch.no_grad():
        want = model(tokens, positions=torch.arange(12).expand(3, 12), cache=full)
        # prefill each row on its own through a view: the rows share the parent's storage
        got = torch.cat([model(tokens[i : i + 1], cache=bucketed.rows(i, i + 1)) for i in range(3)])
        assert torch.allclose(got, want, atol=1e-5)
        assert bucketed.prepare(torch.full((3, 1), 12)).shape == (3, 16)  # 13 positions -> 2 buckets of 8
        step = torch.tensor([[5], [6], [7]])
        a = model(step, positions=torch.full((3, 1), 12), cache=full)
        b = model(step, positions=torch.full((3, 1), 12), cache=bucketed)
        assert torch.allclose(a, b, atol=1e-5)
    bucketed.reset_rows([1])
    assert (bucketed.key_positions[1] == -1).all() and (bucketed.key_positions[0, :13] >= 0).all()


def test_logits_index_projects_one_position_per_row():
    cfg = ModelConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64)
    model = build_model(cfg, seed=0).eval()
    tokens = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        picked = model(tokens, logits_index=torch.tensor([9, 4]))
    assert picked.shape == (2, 1, 101)
    assert torch.allclose(picked[0, 0], full[0, 9], atol=1e-6) and torch.allclose(
        picked[1, 0], full[1, 4], atol=1e-6
    )


def test_cpu_block_pool_is_zero_and_takes_memory_only_as_used():
    """A server's pool (every row's full context) starts zeroed, without writing gigabytes of zeros at start:
    the memory comes as blocks are written (a 1 GiB pool raises the process's RSS by far less)."""
    import psutil

    cfg = ModelConfig(n_layers=2, dim=256, n_heads=4, n_kv_heads=4, ffn_dim=512, vocab_size=256)
    process = psutil.Process()
    before = process.memory_info().rss
    cache = PagedKVCache(cfg, num_blocks=1 << 13, block_size=32, max_batch=1, max_len=64)
    pool = 2 * cfg.n_layers * cache.k[0].numel() * cache.k[0].element_size()
    assert pool >= 1 << 30
    assert process.memory_info().rss - before < pool / 16
    assert not cache.k[0][::4096].any() and not cache.v[-1][-1].any()
    cache.k[0][5] = 1.0  # writable in place, like any tensor
    assert cache.k[0][5].eq(1).all() and not cache.k[0][4].any()
