import json
from pathlib import Path

import numpy as np
import pytest

from bessemer.config import load_config
from bessemer.data.indexed import IndexedDatasetWriter, mask_prefix, meta_path
from bessemer.train.trainer import Trainer
from tests.train.conftest import synthetic_dataset, tiny_overrides  # noqa: F401 (a fixture, re-exported)

ALL_TARGETS = '["q","k","v","o","gate","up","down"]'

N_PAIRS = 4


def make_pairs(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(3, 500, n).tolist()  # noqa: E731
    return [
        {
            "prompt_ids": ids(rng.integers(4, 8)),
            "chosen_ids": ids(rng.integers(2, 6)),
            "rejected_ids": ids(rng.integers(2, 6)),
        }
        for _ in range(N_PAIRS)
    ]


def write_pairs(prefix: Path, seed: int = 0) -> str:
    """The make_pairs(seed) set as a preference dataset at `prefix` (documents 2k, 2k + 1: pair k's answers)."""
    with (
        IndexedDatasetWriter(prefix, np.uint16) as docs,
        IndexedDatasetWriter(mask_prefix(prefix), np.uint8) as masks,
    ):
        for pair in make_pairs(seed):
            for answer in (pair["chosen_ids"], pair["rejected_ids"]):
                docs.add_document(np.asarray(pair["prompt_ids"] + answer, dtype=np.uint16))
                masks.add_document(
                    np.asarray([0] * len(pair["prompt_ids"]) + [1] * len(answer), dtype=np.uint8)
                )
    meta_path(prefix).write_text(json.dumps({"handler": "preference", "pairs": N_PAIRS}))
    return str(prefix)


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory) -> str:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pref")


@pytest.fixture(scope="session")
def base_run(synthetic_dataset, tmp_path_factory) -> Path:  # noqa: F811
    """A tiny fully trained run: the base LoRA runs start from (3 steps, so its weights are not the init)."""
    run = tmp_path_factory.mktemp("base") / "run"
    Trainer(load_config(None, tiny_overrides(synthetic_dataset, run, **{"train.steps": 3}))).train()
    return run


def lora_overrides(data: str, base: Path, out_dir: Path, **extra) -> list[str]:
    return tiny_overrides(
        data,
        out_dir,
        **{
            "train.finetune": f'"{base}"',
            "lora.rank": 4,
            "lora.alpha": 8,
            "lora.targets": ALL_TARGETS,
            "optim.lr": 1e-2,
            "train.steps": 6,
            **extra,
        },
    )
