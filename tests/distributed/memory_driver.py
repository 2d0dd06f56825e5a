"""Host memory of training jobs, measured inside each rank (Linux: /proc/self).

    torchrun --nproc-per-node N -m tests.distributed.memory_driver SPEC.json

SPEC: a list of {"overrides": [...], "result": PATH}. The jobs run one after another in the same ranks; before
each the peak resident set is reset, so each job's figures are its own. Every rank appends to `result` (JSON
lines) its resident set in bytes: `base` before anything of the model exists (torch imported, process group
up), `built` the peak up to a built model (weights initialised or loaded), `peak` the peak after training, and
`share`: this rank's bytes of parameters, gradients (one per parameter) and optimizer state; plus
`replica`, the bytes of one whole copy of the model's parameters.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from bessemer.config import load_config
from bessemer.train.trainer import Trainer


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark VmHWM (Linux >= 4.0)


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def state_share(trainer: Trainer) -> int:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    share = 2 * sum(local_bytes(p) for p in params)
    for state in trainer.optimizer.state.values():
        share += sum(local_bytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.ndim)
    return share


def run(job: dict) -> dict:
    reset_peak_rss()
    base = psutil.Process().memory_info().rss
    trainer = Trainer(load_config(None, job["overrides"]))
    built = peak_rss()
    trainer.train()
    replica = sum(p.numel() * p.element_size() for p in trainer.model.parameters())  # DTensor: whole sizes
    return {
        "base": base,
        "built": built,
        "peak": peak_rss(),
        "share": state_share(trainer),
        "replica": replica,
    }


def main(spec_path: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=600))
    for job in json.loads(Path(spec_path).read_text()):
        record = {"rank": dist.get_rank(), **run(job)}
        for rank in range(dist.get_world_size()):  # one writer at a time
            if rank == dist.get_rank():
                with open(job["result"], "a") as f:
                    f.write(json.dumps(record) + "\n")
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
