from pathlib import Path

import pytest

from bessemer.config import load_config
from bessemer.train.trainer import Trainer
from tests.train.conftest import synthetic_dataset, tiny_overrides  # noqa: F401 (a fixture, re-exported)

ALL_TARGETS = '["q","k","v","o","gate","up","down"]'


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
