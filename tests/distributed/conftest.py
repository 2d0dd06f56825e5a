"""Launch helpers for multi-process runs: torchrun on CPU with gloo, tiny models, a handful of steps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.train.conftest import (  # noqa: F401 (fixture and helpers re-exported)
    losses,
    synthetic_dataset,
    tiny_overrides,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


def torchrun_cmd(nproc: int, module_args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--monitor-interval=0.2",
        "-m",
        *module_args,
    ]


def torchrun(
    nproc: int, module_args: list[str], timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` on `nproc` local ranks; fail the test with the output tail if it fails.

    env: extra environment variables for the ranks."""
    started = time.perf_counter()
    proc = subprocess.run(
        torchrun_cmd(nproc, module_args),
        env={**worker_env(), **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def train(nproc: int, config: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return torchrun(nproc, ["bessemer", "train", "--config", str(config), *extra], timeout=timeout)


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)
