"""Resuming under a changed config: the new hyper-parameters apply (named in one warning), a changed sample order
is refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.train.optim import lr_factor
from bessemer.train.trainer import Trainer
from tests.train.conftest import tiny_overrides


def test_resume_takes_the_new_lr_and_betas_and_refuses_a_new_seq_len(synthetic_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    base = {"train.steps": 3, "checkpoint.interval": 3}
    Trainer(load_config(None, tiny_overrides(synthetic_dataset, run, **base))).train()
    shutil.copytree(run, tmp_path / "copy")

    changed = {"train.steps": 4, "checkpoint.resume": "true", "optim.lr": 1e-3, "optim.betas": "[0.8, 0.9]"}
    trainer = Trainer(load_config(None, tiny_overrides(synthetic_dataset, run, **changed)))
    with caplog.at_level("WARNING", logger="bessemer.train.resume"):
        trainer.train()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bessemer.train.resume"]
    assert "optim.lr 0.003 -> 0.001" in line and "optim.betas [0.9, 0.95] -> [0.8, 0.9]" in line
    assert "train.steps 3 -> 4" in line and "\n" not in line
    step4 = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert step4["step"] == 4
    assert step4["lr"] == pytest.approx(1e-3 * lr_factor(3, trainer.cfg.schedule, 4), rel=1e-12)
    assert {tuple(g["betas"]) for g in trainer.optimizer.param_groups} == {(0.8, 0.9)}
    assert trainer.optimizer.state  # the moments came from the checkpoint

    other = {"train.steps": 4, "checkpoint.resume": "true", "train.seq_len": 16}
    with pytest.raises(ConfigError, match=r"train.seq_len=32, this run has 16.*--finetune") as info:
        Trainer(load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "copy", **other))).train()
    assert "\n" not in str(info.value)
