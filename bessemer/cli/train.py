"""`bessemer train`: pretrain or fine-tune from a TOML config, on one process or under torchrun."""

from __future__ import annotations

import argparse

HELP = "train a model from a TOML config (one process, or many under torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TOML config (see configs/)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a train.out_dir that holds checkpoints (removes its step dirs)",
    )
    p.add_argument(
        "--finetune", metavar="CKPT", help="start from these weights with a fresh optimizer and schedule"
    )
    p.add_argument("--out-dir", help="run directory (train.out_dir)")
    p.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    p.set_defaults(overrides=[])
    p.epilog = (
        "Any config key can be overridden as --section.key=value, e.g. --optim.lr=3e-4 --train.seq_len=512"
    )


def run(args: argparse.Namespace) -> int:
    from bessemer.config import load_config
    from bessemer.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.resume:
        overrides.append("checkpoint.resume=true")
    if args.overwrite:
        overrides.append("checkpoint.overwrite=true")
    if args.finetune:
        overrides.append(f"train.finetune={args.finetune!r}")
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir!r}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    try:
        trainer = Trainer(cfg)
        summary = trainer.train()
        if trainer.rank == 0:
            print(f"trained to step {summary['step']}; checkpoints in {trainer.out_dir / 'checkpoints'}")
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to process exit, gloo's worker threads
    can be destroyed while still joinable, which aborts the rank ("terminate called without an active
    exception") after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
