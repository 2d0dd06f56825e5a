"""Fixtures for the data tests: the demo tokenizer folder (tests/conftest.py builds it) and small datasets."""

from __future__ import annotations

import numpy as np
import pytest

from bessemer.data.indexed import IndexedDatasetWriter


@pytest.fixture(scope="session")
def tokenizer_dir(demo_tokenizer_dir):
    return demo_tokenizer_dir


def write_dataset(prefix, docs, dtype=np.uint16, masks=None):
    """Write `docs` (lists of ids) to PREFIX.bin/.idx, and `masks` to PREFIX_mask when given."""
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    if masks is not None:
        with IndexedDatasetWriter(f"{prefix}_mask", np.uint8) as w:
            for m in masks:
                w.add_document(m)
    return str(prefix)


def numbered_docs(n_docs: int, seed: int = 0, base: int = 0, max_len: int = 40):
    """Documents whose tokens are distinct running numbers (plus `base`), so a sample shows where it came from."""
    rng = np.random.default_rng(seed)
    docs, nxt = [], base
    for _ in range(n_docs):
        n = int(rng.integers(1, max_len))
        docs.append(np.arange(nxt, nxt + n))
        nxt += n
    return docs
