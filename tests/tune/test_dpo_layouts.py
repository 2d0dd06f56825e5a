"""DPO on several processes: FSDP2 (dp_shard, dp_replicate) and tensor parallel runs, with and without LoRA and
with frozen and precomputed references, give the one-process run's per-step losses and rewards, also when cut
and resumed (dp_shard=2); pipeline and context parallelism are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.parallel import ParallelDims
from bessemer.train.trainer import Trainer
from bessemer.tune.dpo import attach_dpo
from tests.distributed.conftest import torchrun
from tests.tune.conftest import write_pairs
from tests.tune.test_dpo import STEPS, dpo_overrides, records

REL = 1e-5  # fp32: layouts only reorder float additions (see tests/distributed/test_equivalence.py)
KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")
LORA = {"lora.rank": 4, "lora.alpha": 8, "lora.targets": '["q","v","down"]'}
PRE = {"dpo.reference": '"precomputed"'}
DP_SHARD = {"parallel.dp_shard": 2}
DP_REPLICATE = {"parallel.dp_replicate": 2, "parallel.dp_shard": 1}
TP = {"parallel.tp": 2, "parallel.dp_shard": 1}


def assert_like(got: Path, want: Path, name: str) -> None:
    ours, theirs = records(got), records(want)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1)), name
    for a, b in zip(ours, theirs):
        for key in KEYS:
            assert a[key] == pytest.approx(b[key], rel=REL, abs=1e-7), (name, key, a, b)


@pytest.mark.distributed
@pytest.mark.slow
def test_dpo_layouts_match_one_process_and_resume(base_run, tmp_path):
    data = write_pairs(tmp_path / "pref")
    full, lora = tmp_path / "one_full", tmp_path / "one_lora"
    Trainer(load_config(None, dpo_overrides(data, base_run, full))).train()
    Trainer(load_config(None, dpo_overrides(data, base_run, lora, **LORA))).train()

    # each precomputed run scores its own copy of the data, so the table is computed under that layout
    runs = {
        "full dp_replicate=2 precomputed": (
            full,
            write_pairs(tmp_path / "a" / "pref"),
            {**DP_REPLICATE, **PRE},
        ),
        "full tp=2 frozen": (full, data, TP),
        "lora tp=2 adapters off": (lora, data, {**TP, **LORA}),
        "lora dp_shard=2 precomputed": (
            lora,
            write_pairs(tmp_path / "b" / "pref"),
            {**DP_SHARD, **LORA, **PRE},
        ),
    }
    jobs = [
        {"overrides": dpo_overrides(prefix, base_run, tmp_path / f"run{i}", **extra)}
        for i, (_, prefix, extra) in enumerate(runs.values())
    ]
    cut = tmp_path / "cut"  # a frozen-reference run under dp_shard=2, cut after step 2 and resumed
    jobs.append({"overrides": dpo_overrides(data, base_run, cut, **DP_SHARD, **{"train.steps": 2})})
    jobs.append(
        {"overrides": dpo_overrides(data, base_run, cut, **DP_SHARD, **{"checkpoint.resume": "true"})}
    )
    for k, job in enumerate(jobs):
        job["result"] = str(tmp_path / f"result{k}.json")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(jobs))
    torchrun(2, ["tests.distributed.driver", str(spec)])

    for job in jobs:
        assert json.loads(Path(job["result"]).read_text()) == {"ok": True, "skipped": 0}, job["result"]
    for i, (name, (want, _, _)) in enumerate(runs.items()):
        assert_like(tmp_path / f"run{i}", want, name)
    assert_like(cut, full, "full dp_shard=2 frozen, cut and resumed")


@pytest.mark.parametrize(
    "layout, words",
    [
        ({"pp": 2}, "dpo with parallel.pp=2: a pair's loss needs both answers' and the reference's"),
        ({"cp": 2}, "dpo with parallel.cp=2: answers' log-probabilities would be split over the context"),
    ],
)
def test_pipeline_and_context_parallel_dpo_are_refused_in_one_line(layout, words):
    dims = ParallelDims(
        **{"dp_replicate": 1, "dp_shard": 1, "tp": 1, "pp": 1, "cp": 1, **layout}, world_size=2
    )
    trainer = SimpleNamespace(cfg=SimpleNamespace(dpo=SimpleNamespace(enabled=True)), dims=dims)
    with pytest.raises(ConfigError, match=words):
        attach_dpo(trainer)
