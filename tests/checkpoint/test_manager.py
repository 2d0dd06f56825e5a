"""Resume that survives damage, saves that fail cleanly, async saves that are exact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed.checkpoint.filesystem as dcp_fs

from bessemer.checkpoint.manager import CheckpointManager
from bessemer.config import load_config
from bessemer.errors import CheckpointError
from bessemer.train.trainer import Trainer
from tests.train.conftest import losses, tiny_overrides, write_config

STEPS = 6


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory):
    """An uninterrupted run's per-step losses, and its run dir (checkpoints at 3 and 6)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    over = tiny_overrides(synthetic_dataset, run, **{"train.steps": STEPS, "checkpoint.keep": 0})
    Trainer(load_config(None, over)).train()
    return losses(run), run


def _resume_from_copy(reference, data, tmp_path, damage, **extra):
    """Copy the reference run, damage its step-6 checkpoint, rerun to step 9 with --resume."""
    run = tmp_path / "run"
    shutil.copytree(reference[1], run)
    (run / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (run / "metrics.jsonl").read_text().splitlines()[:3])
    )
    damage(run / "checkpoints" / "step-000006")
    over = tiny_overrides(data, run, **{"train.steps": STEPS, "checkpoint.resume": "true", **extra})
    trainer = Trainer(load_config(None, over))
    return trainer, run


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(max(1, os.path.getsize(path) // 2))


DAMAGE = {
    "truncated shard": lambda c: _truncate(next((c / "state").glob("*.distcp"))),
    "truncated metadata": lambda c: _truncate(c / "state" / ".metadata"),
    "broken train_state.json": lambda c: (c / "train_state.json").write_text("{not json"),
    "no manifest": lambda c: (c / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_past_a_damaged_checkpoint(damage, reference, synthetic_dataset, tmp_path, caplog):
    trainer, run = _resume_from_copy(reference, synthetic_dataset, tmp_path, DAMAGE[damage])
    if damage == "no manifest":  # an unfinished or older checkpoint: the newest can still be picked, but
        # a manifest-less step dir never appears under its final name from this version's saves
        assert trainer.checkpoints.latest().name == "step-000006"
        return
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "step-000006" in caplog.text and "newest complete checkpoint" in caplog.text
    assert losses(run) == reference[0]  # resumed at 3, and steps 4-6 match the uninterrupted run exactly


def test_retention_never_deletes_the_checkpoint_a_fallback_resume_writes(
    reference, synthetic_dataset, tmp_path
):
    """keep=1 after resuming past a damaged step-6: the step-4 save must survive (it is the newest good one);
    the damaged step dir numbered above it is not counted against it."""
    trainer, run = _resume_from_copy(
        reference,
        synthetic_dataset,
        tmp_path,
        DAMAGE["truncated shard"],
        **{"train.steps": 4, "checkpoint.keep": 1},
    )
    trainer.train()
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000004"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000004", "step-000006"]
    again = Trainer(
        load_config(None, tiny_overrides(synthetic_dataset, run, **{"checkpoint.resume": "true"}))
    )
    assert again.checkpoints.latest().name == "step-000004"


def test_a_fresh_run_into_checkpoints_is_refused_unless_overwrite(reference, synthetic_dataset, tmp_path):
    """Without --resume a run would replace an earlier run's step dirs as it reaches them, and a later --resume
    would pick the earlier run's newer steps: refused in one line, changing nothing; --overwrite starts over."""
    run = tmp_path / "run"
    shutil.copytree(reference[1], run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    config = (run / "run_config.json").read_text()
    over = tiny_overrides(synthetic_dataset, run, **{"train.steps": 3})
    with pytest.raises(CheckpointError, match=r"newest step-000006\); pass --resume.*--overwrite") as info:
        Trainer(load_config(None, over)).train()
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "run_config.json").read_text() == config
    finetune = f'train.finetune="{run}"'  # its own newest checkpoint: never removed
    with pytest.raises(
        CheckpointError, match=r"--overwrite would remove .*run, the checkpoint this run starts"
    ):
        Trainer(load_config(None, [*over, "checkpoint.overwrite=true", finetune])).train()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    Trainer(load_config(None, [*over, "checkpoint.overwrite=true"])).train()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000003"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


def test_no_complete_checkpoint_is_one_line(reference, synthetic_dataset, tmp_path):
    def damage_all(ckpt):
        for c in ckpt.parent.glob("step-*"):
            (c / "train_state.json").write_text("")

    trainer, run = _resume_from_copy(reference, synthetic_dataset, tmp_path, damage_all)
    with pytest.raises(CheckpointError, match="no complete checkpoint") as info:
        trainer.train()
    assert "\n" not in str(info.value)


def test_disk_full_during_save_removes_the_partial_checkpoint(synthetic_dataset, tmp_path, monkeypatch):
    code = errno.ENOSPC
    run = tmp_path / "run"
    over = tiny_overrides(synthetic_dataset, run, **{"train.steps": STEPS})
    trainer = Trainer(load_config(None, over))
    real_write = dcp_fs._write_item
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        if trainer.step >= 6:  # the second save fails part-way through
            calls["n"] += 1
            if calls["n"] > 2:
                raise OSError(code, os.strerror(code))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dcp_fs, "_write_item", failing_write)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and errno.errorcode[code] in message and "step 6" in message
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000003"]  # partial one removed
    assert (ckpts / "latest").read_text().strip() == "step-000003"
    monkeypatch.setattr(dcp_fs, "_write_item", real_write)
    resumed = Trainer(load_config(None, [*over, "checkpoint.resume=true"]))
    assert resumed.checkpoints.latest().name == "step-000003"


def test_permission_error_while_completing_keeps_earlier_checkpoints(
    synthetic_dataset, tmp_path, monkeypatch
):
    import bessemer.checkpoint.manager as manager

    run = tmp_path / "run"
    trainer = Trainer(load_config(None, tiny_overrides(synthetic_dataset, run, **{"train.steps": 3})))
    trainer.train()

    def denied(root):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(manager, "write_manifest", denied)
    trainer.step = 4
    with pytest.raises(CheckpointError, match="EACCES.*make train.out_dir writable"):
        trainer.save()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000003"]


def test_leftover_tmp_never_blocks_resume(reference, synthetic_dataset, tmp_path):
    def leave_tmp(ckpt):
        shutil.copytree(ckpt, ckpt.parent / ".step-000009.tmp")
        _truncate(ckpt.parent / ".step-000009.tmp" / "state" / ".metadata")

    trainer, run = _resume_from_copy(
        reference, synthetic_dataset, tmp_path, leave_tmp, **{"train.steps": 9, "checkpoint.interval": 9}
    )
    assert trainer.checkpoints.latest().name == "step-000006"
    trainer.train()
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed run's leftover is gone
    assert (run / "checkpoints" / "step-000009" / "manifest.json").is_file()


def test_async_save_trains_on_while_writing_and_resumes_exactly(
    reference, synthetic_dataset, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    over = tiny_overrides(
        synthetic_dataset,
        run,
        **{"train.steps": STEPS, "checkpoint.async_save": "true", "checkpoint.keep": 0},
    )
    trainer = Trainer(load_config(None, over))
    release = threading.Event()
    steps_during_write = []
    real_write = dcp_fs._write_item

    def slow_write(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            steps_during_write.append(trainer.step)
            release.wait(timeout=60)  # the write of step 3 holds until training has gone on
        return real_write(*args, **kwargs)

    real_step = trainer.train_step

    def step_and_release(**kwargs):
        out = real_step(**kwargs)
        if trainer.step >= 4:  # step 5 is running: the step-3 write is still blocked
            release.set()
        return out

    monkeypatch.setattr(dcp_fs, "_write_item", slow_write)
    monkeypatch.setattr(trainer, "train_step", step_and_release)
    trainer.train()
    assert steps_during_write and min(steps_during_write) == 3
    assert release.is_set()  # training reached step 5 while the step-3 shards were still being written
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000006"
    assert losses(run) == reference[0]
    # resume from the async step-3 checkpoint: the same losses as the uninterrupted run
    shutil.rmtree(ckpts / "step-000006")
    lines = (run / "metrics.jsonl").read_text().splitlines()[:3]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    Trainer(load_config(None, [*over, "checkpoint.resume=true"])).train()
    assert losses(run) == reference[0]


@pytest.mark.slow
def test_sigkill_during_save_then_resume(reference, synthetic_dataset, tmp_path):
    """A process killed while its shards are written leaves a .tmp dir; resume ignores and removes it."""
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.toml", tiny_overrides(synthetic_dataset, run, **{"train.steps": STEPS})
    )
    driver = (
        "import sys, time, torch.distributed.checkpoint.filesystem as f\n"
        "real = f._write_item\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.05)\n"
        "    return real(*a, **k)\n"
        "f._write_item = slow\n"
        "from bessemer.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", driver, "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / ".step-000006.tmp" / "state").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second save"
        time.sleep(0.01)
    time.sleep(0.1)  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpts / "latest").read_text().strip() == "step-000003"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["step"] <= 3)
    )
    Trainer(
        load_config(
            None,
            [*tiny_overrides(synthetic_dataset, run, **{"train.steps": STEPS}), "checkpoint.resume=true"],
        )
    ).train()
    assert losses(run) == reference[0]
    assert not list(ckpts.glob(".*.tmp"))


def test_manager_refuses_a_non_training_checkpoint(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        CheckpointManager.load(tmp_path / "c", {"model": {}})
