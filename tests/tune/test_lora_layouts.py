"""LoRA on every layout: FSDP2, TP and PP runs give the one-process LoRA run's losses, and a LoRA checkpoint
saved under one layout resumes under another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bessemer.config import load_config
from bessemer.train.trainer import Trainer
from tests.distributed.conftest import losses, torchrun
from tests.tune.conftest import lora_overrides

STEPS = 4
REL = 1e-5  # fp32: layouts only reorder float additions (see tests/distributed/test_equivalence.py)
LAYOUTS = {
    "dp_shard=2": {"parallel.dp_shard": 2},
    "tp=2": {"parallel.tp": 2, "parallel.dp_shard": 1},
    "pp=2": {"parallel.pp": 2, "parallel.dp_shard": 1},
}


def overrides(data, base, out, **extra) -> list[str]:
    # a constant schedule after warm-up: a run cut at step 2 and resumed sees the same learning rates
    fixed = {
        "train.steps": STEPS,
        "checkpoint.interval": 2,
        "checkpoint.keep": 0,
        "schedule.decay": '"constant"',
    }
    return lora_overrides(data, base, out, **{**fixed, **extra})


@pytest.mark.distributed
@pytest.mark.slow
def test_lora_layouts_match_one_process_and_resume_across_layouts(synthetic_dataset, base_run, tmp_path):
    reference = tmp_path / "one"
    Trainer(load_config(None, overrides(synthetic_dataset, base_run, reference))).train()
    want = losses(reference)

    jobs = []
    for name, extra in LAYOUTS.items():
        out = tmp_path / name.replace("=", "")
        jobs.append(
            {"overrides": overrides(synthetic_dataset, base_run, out, **extra), "result": f"{out}.json"}
        )
    cut = tmp_path / "tp_then_pp"  # two steps under tp=2, the rest resumed under pp=2
    jobs.append(
        {
            "overrides": overrides(synthetic_dataset, base_run, cut, **LAYOUTS["tp=2"], **{"train.steps": 2}),
            "result": f"{cut}.tp.json",
        }
    )
    resumed = {**LAYOUTS["pp=2"], "checkpoint.resume": "true"}
    jobs.append(
        {"overrides": overrides(synthetic_dataset, base_run, cut, **resumed), "result": f"{cut}.pp.json"}
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(jobs))
    torchrun(2, ["tests.distributed.driver", str(spec)])

    for job in jobs:
        assert json.loads(Path(job["result"]).read_text()) == {"ok": True, "skipped": 0}, job["result"]
    for name in LAYOUTS:
        got = losses(tmp_path / name.replace("=", ""))
        for step in range(1, STEPS + 1):
            assert got[step] == pytest.approx(want[step], rel=REL), (name, step, got, want)
    got = losses(cut)
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=REL), ("tp then pp", step, got, want)
