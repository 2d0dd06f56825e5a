"""Faults under torchrun: SIGTERM saves and exits cleanly on every rank; a dead rank fails the job fast."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.distributed.conftest import REPO, children, tiny_overrides, torchrun_cmd, worker_env, write_config


def start(tmp_path, data, steps: int) -> tuple[subprocess.Popen, object]:
    run = tmp_path / "run"
    over = tiny_overrides(
        data, run, **{"train.steps": steps, "checkpoint.interval": 0, "parallel.dp_shard": 2}
    )
    config = write_config(tmp_path / "c.toml", over)
    proc = subprocess.Popen(
        torchrun_cmd(2, ["bessemer", "train", "--config", str(config)]),
        env=worker_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, run


def wait_for_steps(proc: subprocess.Popen, run, n: int, timeout: float = 120) -> list[int]:
    """Block until the run logged `n` steps; return the worker pids (rank order)."""
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    return workers


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_to_one_rank_saves_on_all_and_exits_cleanly(synthetic_dataset, tmp_path):
    proc, run = start(tmp_path, synthetic_dataset, steps=10_000)
    try:
        workers = wait_for_steps(proc, run, 2)
        subprocess.run(["kill", "-TERM", str(workers[1])], check=True)  # rank 1 only: the ranks must agree
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    latest = (run / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("-")[1])
    assert 2 <= step < 10_000
    state = json.loads((run / "checkpoints" / latest / "train_state.json").read_text())
    assert state["step"] == step


@pytest.mark.distributed
@pytest.mark.slow
def test_a_dead_rank_fails_the_job_fast_and_is_named(synthetic_dataset, tmp_path):
    proc, run = start(tmp_path, synthetic_dataset, steps=10_000)
    try:
        workers = wait_for_steps(proc, run, 2)
        killed = time.time()
        subprocess.run(["kill", "-KILL", str(workers[1])], check=True)
        out, _ = proc.communicate(timeout=90)
        took = time.time() - killed
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert took < 60, f"the job took {took:.0f}s to fail"
    # torchrun's failure report names the dead rank, its pid and the signal
    assert re.search(rf"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9 \(pid: {workers[1]}\)", out), out[
        -3000:
    ]
