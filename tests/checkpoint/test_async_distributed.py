"""Async checkpoints on two ranks (FSDP, gloo): published complete, and a one-process resume is exact."""

from __future__ import annotations

import shutil

import pytest

from bessemer.config import load_config
from bessemer.train.trainer import Trainer
from tests.distributed.conftest import losses, tiny_overrides, train, write_config


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_async_save_resumes_in_one_process(synthetic_dataset, tmp_path):
    over = {"train.steps": 4, "checkpoint.interval": 2, "checkpoint.keep": 0}
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.toml",
        tiny_overrides(
            synthetic_dataset, run, **over, **{"parallel.dp_shard": 2, "checkpoint.async_save": "true"}
        ),
    )
    train(2, config)
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000004"
    assert (ckpts / "step-000002" / "manifest.json").is_file() and not list(ckpts.glob(".*.tmp"))
    two_rank = losses(run)

    one = tmp_path / "one"
    (one / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts / "step-000002", one / "checkpoints" / "step-000002")
    Trainer(
        load_config(None, [*tiny_overrides(synthetic_dataset, one, **over), "checkpoint.resume=true"])
    ).train()
    resumed = losses(one)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(two_rank[step], rel=1e-5)
