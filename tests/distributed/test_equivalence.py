"""Every layout trains like one process: same per-step losses (fp32, rel 1e-5), checkpoints that reshard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bessemer.config import load_config
from bessemer.train.trainer import Trainer
from tests.distributed.conftest import losses, tiny_overrides, torchrun, train, write_config

STEPS = 4
# fp32 on CPU: layouts only change the order of float additions (sharded reductions, all-reduce sums), so the
# losses agree to a few ulps per step; 1e-5 leaves room for 4 steps of AdamW amplifying those differences.
REL = 1e-5

LAYOUTS = {  # all on 2 ranks
    "dp_replicate=2": {"parallel.dp_replicate": 2, "parallel.dp_shard": 1},
    "dp_shard=2": {"parallel.dp_shard": 2},
    "tp=2": {"parallel.tp": 2, "parallel.dp_shard": 1},
    "pp=2 1F1B": {"parallel.pp": 2, "parallel.dp_shard": 1, "parallel.pp_schedule": '"1F1B"'},
    "pp=2 GPipe": {"parallel.pp": 2, "parallel.dp_shard": 1, "parallel.pp_schedule": '"GPipe"'},
}


def overrides(data, out_dir, **extra) -> list[str]:
    return tiny_overrides(
        data, out_dir, **{"train.steps": STEPS, "checkpoint.interval": 2, "checkpoint.keep": 0, **extra}
    )


@pytest.fixture(scope="module")
def reference_run(synthetic_dataset, tmp_path_factory) -> Path:
    """The control: one process, same tokens per step."""
    out = tmp_path_factory.mktemp("reference") / "run"
    Trainer(load_config(None, overrides(synthetic_dataset, out))).train()
    return out


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[int, float]:
    return losses(reference_run)


def grad_norms(run_dir: Path) -> dict[int, float]:
    """Per-step gradient norm: equal losses alone would hide a gradient scaled by a constant (dp size), which
    AdamW's update and clipping to a fixed norm both cancel."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["grad_norm"] for r in records}


def sft_dataset(folder: Path) -> str:
    """Documents whose answers (loss mask 1) start at a different point in each, so the two data-parallel ranks
    hold different numbers of target tokens in every step."""
    from tests.data.conftest import write_dataset

    rng = np.random.default_rng(1)
    docs = [np.arange(s, s + int(rng.integers(40, 120))) % 500 for s in rng.integers(0, 50, 60)]
    masks = [(np.arange(len(d)) >= int(rng.integers(0, len(d)))).astype(np.uint8) for d in docs]
    return write_dataset(folder / "sft", docs, masks=masks)


def assert_close(got: dict[int, float], want: dict[int, float], steps, layout: str = "") -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=REL), (layout, step, got, want)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_layouts_match_one_process(synthetic_dataset, reference_run, reference, tmp_path):
    """dp_replicate, dp_shard, tp, pp (1F1B, GPipe, interleaved 1F1B) on 2 ranks: losses and gradient norms;
    SFT data with uneven target counts per rank under dp_shard=2; dp_shard=2's checkpoint resumed under tp=2;
    NaN policies under dp_shard=2."""
    jobs = []
    for name, extra in LAYOUTS.items():
        out = tmp_path / name.replace(" ", "_").replace("=", "")
        jobs.append(
            {
                "overrides": overrides(synthetic_dataset, out, **extra),
                "result": f"{out}.json",
                "out": str(out),
            }
        )
    sft_data = sft_dataset(tmp_path)
    sft_out, tp_resumed = tmp_path / "sft_dp_shard2", tmp_path / "tp2_from_dp_shard2"
    jobs.append(
        {
            "overrides": overrides(sft_data, sft_out, **{"parallel.dp_shard": 2}),
            "result": f"{sft_out}.json",
        }
    )
    jobs.append(
        {
            "overrides": overrides(
                synthetic_dataset,
                tp_resumed,
                **{"parallel.tp": 2, "parallel.dp_shard": 1, "checkpoint.resume": "true"},
            ),
            "result": f"{tp_resumed}.json",
            "resume_from": str(tmp_path / "dp_shard2" / "checkpoints" / "step-000002"),
            "out": str(tp_resumed),
        }
    )
    interleaved = {
        "model.n_layers": 4,
        "parallel.pp": 2,
        "parallel.dp_shard": 1,
        "parallel.pp_schedule": '"Interleaved1F1B"',
        "parallel.pp_stages_per_rank": 2,
    }
    out = tmp_path / "pp2x2_interleaved"
    jobs.append({"overrides": overrides(synthetic_dataset, out, **interleaved), "result": f"{out}.json"})
    for policy in ("stop", "skip"):
        out = tmp_path / f"nan_{policy}"
        over = overrides(
            synthetic_dataset, out, **{"parallel.dp_shard": 2, "train.nan_policy": f'"{policy}"'}
        )
        jobs.append({"overrides": over, "result": f"{out}.json", "poison_step": 2})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(jobs))
    torchrun(2, ["tests.distributed.driver", str(spec)])
    for name, job in zip(LAYOUTS, jobs):
        assert json.loads(Path(job["result"]).read_text()) == {"ok": True, "skipped": 0}, name
        got = losses(Path(job["out"]))
        assert_close(got, reference, range(1, STEPS + 1), name)
        assert_close(grad_norms(Path(job["out"])), grad_norms(reference_run), range(1, STEPS + 1), name)
    for out in (sft_out, tp_resumed):
        assert json.loads(Path(f"{out}.json").read_text()) == {"ok": True, "skipped": 0}, out.name
    # the loss is the mean over the step's target tokens of both ranks, as on one process
    Trainer(load_config(None, overrides(sft_data, tmp_path / "sft_one"))).train()
    assert_close(losses(sft_out), losses(tmp_path / "sft_one"), range(1, STEPS + 1), "sft")
    assert_close(grad_norms(sft_out), grad_norms(tmp_path / "sft_one"), range(1, STEPS + 1), "sft")
    assert sorted(losses(tp_resumed)) == [3, 4]
    assert_close(losses(tp_resumed), reference, [3, 4], "tp=2 resumed from dp_shard=2")
    # interleaved 1F1B: 4 stages of one layer, two per rank, against its own 4-layer one-process control
    Trainer(
        load_config(None, overrides(synthetic_dataset, tmp_path / "ref4", **{"model.n_layers": 4}))
    ).train()
    assert json.loads(Path(jobs[-3]["result"]).read_text()) == {"ok": True, "skipped": 0}
    assert_close(losses(tmp_path / "pp2x2_interleaved"), losses(tmp_path / "ref4"), range(1, STEPS + 1))
    stop = json.loads(Path(jobs[-2]["result"]).read_text())
    assert not stop["ok"] and "step 2" in stop["error"] and "nan_policy=skip" in stop["error"]
    assert json.loads(Path(jobs[-1]["result"]).read_text()) == {"ok": True, "skipped": 1}


@pytest.mark.distributed
@pytest.mark.slow
def test_tp_x_dp_shard_matches_and_its_checkpoint_reshards(synthetic_dataset, reference, tmp_path):
    """Train under tp=2 x dp_shard=2; resume its step-2 checkpoint under pp=2 and under one process."""
    run = tmp_path / "tp_fsdp"
    config = write_config(
        tmp_path / "c.toml",
        overrides(synthetic_dataset, run, **{"parallel.tp": 2, "parallel.dp_shard": 2}),
    )
    train(4, config)
    assert_close(losses(run), reference, range(1, STEPS + 1))

    def from_step_2(name: str):
        out = tmp_path / name
        (out / "checkpoints").mkdir(parents=True)
        shutil.copytree(run / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
        (out / "checkpoints" / "latest").write_text("step-000002\n")
        return out

    pp_run = from_step_2("resumed_pp")
    pp_config = write_config(
        tmp_path / "pp.toml",
        overrides(synthetic_dataset, pp_run, **{"parallel.pp": 2, "parallel.dp_shard": 1}),
    )
    train(2, pp_config, "--resume")
    assert sorted(losses(pp_run)) == [3, 4]
    assert_close(losses(pp_run), reference, [3, 4])

    one_run = from_step_2("resumed_one")
    Trainer(load_config(None, [*overrides(synthetic_dataset, one_run), "checkpoint.resume=true"])).train()
    assert_close(losses(one_run), reference, [3, 4])

    # --finetune under dp_shard=2: the checkpoint's weights, a fresh optimizer, the data from the start
    ft_one = tmp_path / "ft_one"
    ckpt = run / "checkpoints" / "step-000002"
    ft = {"train.finetune": f'"{ckpt}"', "train.steps": 2}
    Trainer(load_config(None, overrides(synthetic_dataset, ft_one, **ft))).train()
    ft_dist = tmp_path / "ft_dist"
    ft_config = write_config(
        tmp_path / "ft.toml", overrides(synthetic_dataset, ft_dist, **ft, **{"parallel.dp_shard": 2})
    )
    train(2, ft_config)
    assert_close(losses(ft_dist), losses(ft_one), [1, 2])
    assert losses(ft_one)[1] < reference[1]  # it starts from trained weights, not from the seed
