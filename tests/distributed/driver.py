"""Run several training jobs one after another in the same torchrun ranks (one start-up for many layouts).

    torchrun --nproc-per-node N -m tests.distributed.driver SPEC.json

SPEC: a list of {"overrides": [...], "result": PATH, "poison_step": K (optional), "resume_from": CKPT, "out": DIR
(optional)}. Each job is a real Trainer; rank 0 writes {"ok": true, "skipped": n} or {"ok": false, "error":
message} to `result`. With poison_step, rank 1's loss turns NaN in step K (the other ranks must agree to stop or
skip). With resume_from, rank 0 first copies that step dir (an earlier job's) into DIR/checkpoints as its latest.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from bessemer.config import load_config
from bessemer.errors import BessemerError
from bessemer.train.trainer import Trainer


def seed_checkpoint(ckpt: Path, out: Path) -> None:
    if dist.get_rank() == 0:
        (out / "checkpoints").mkdir(parents=True)
        shutil.copytree(ckpt, out / "checkpoints" / ckpt.name)
        (out / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    dist.barrier()


def run(job: dict) -> dict:
    if job.get("resume_from"):
        seed_checkpoint(Path(job["resume_from"]), Path(job["out"]))
    trainer = Trainer(load_config(None, job["overrides"]))
    if job.get("poison_step") and trainer.rank == 1:
        real = trainer.forward_backward

        def poisoned(batch, total):
            out = real(batch, total)
            return out * float("nan") if trainer.step + 1 == job["poison_step"] else out

        trainer.forward_backward = poisoned
    try:
        trainer.train()
    except BessemerError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "skipped": trainer.skipped_steps}


def main(spec_path: str) -> None:
    for job in json.loads(Path(spec_path).read_text()):
        result = run(job)
        if dist.get_rank() == 0:
            Path(job["result"]).write_text(json.dumps(result))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
