"""The prefetching batch source hands out the source's batches in order, with the state of the last one handed out."""

from __future__ import annotations

import pytest
import torch

from bessemer.config import load_config
from bessemer.data.dataset import PackedBatches
from bessemer.errors import DataError
from bessemer.train.prefetch import Prefetcher
from tests.train.conftest import tiny_overrides


def packed(dataset: str, tmp_path) -> PackedBatches:
    cfg = load_config(None, tiny_overrides(dataset, tmp_path))
    return PackedBatches(cfg.data, seq_len=32, micro_batch_size=2, global_batch_size=4, seed=7)


def test_same_batches_and_exact_state_as_the_source(synthetic_dataset, tmp_path):
    plain = packed(synthetic_dataset, tmp_path)
    expected, states = [], []
    for _ in range(9):
        expected.append(next(plain))
        states.append(plain.state_dict())
    ahead = Prefetcher(packed(synthetic_dataset, tmp_path), depth=3)
    for i in range(5):
        got = next(ahead)
        assert all(torch.equal(got[k], expected[i][k]) for k in expected[i])
        assert ahead.state_dict() == states[i]  # not the state of the batches made ahead
    saved = ahead.state_dict()
    ahead.close()
    resumed = Prefetcher(packed(synthetic_dataset, tmp_path))
    resumed.load_state_dict(saved)
    for i in range(5, 9):
        got = next(resumed)
        assert all(torch.equal(got[k], expected[i][k]) for k in expected[i])
    resumed.close()
    ahead.load_state_dict(states[1])  # a resume after batches were made ahead restarts from the state
    got = next(ahead)
    assert all(torch.equal(got[k], expected[2][k]) for k in expected[2])
    ahead.close()


def test_an_error_in_the_source_reaches_the_loop():
    class Broken:
        meta: dict = {}

        def __next__(self):
            raise DataError("seq.bin: truncated")

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(DataError, match="truncated"):
        next(Prefetcher(Broken()))
