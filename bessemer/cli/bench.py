"""`bessemer bench`: training throughput (tokens/s per device, MFU, step time, peak memory) on synthetic tokens."""

from __future__ import annotations

import argparse

HELP = "measure training throughput on synthetic tokens (one process, or many under torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="model preset, e.g. tiny, llama-1b, llama2-7b")
    src.add_argument("--config", help="TOML config (its model and parallel sections are used)")
    p.add_argument("--layers", type=int, help="override the number of layers")
    p.add_argument(
        "--seq-len", type=int, help="tokens per sequence (default: the config's, capped by the model)"
    )
    p.add_argument("--batch", type=int, help="sequences per device per step (train.micro_batch_size)")
    p.add_argument("--steps", type=int, default=10, help="steps to run, warm-up included (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the averages (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="first run the step as it was before issue 12 (every step synced, batches made in the loop, foreach "
        "AdamW, torch's cross-entropy) and print both figures",
    )
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="compute dtype (train.dtype)")
    p.set_defaults(overrides=[])
    p.epilog = "Any config key can be overridden as --section.key=value, e.g. --parallel.tp=2"


def run(args: argparse.Namespace) -> int:
    import torch

    from bessemer.bench.throughput import run_throughput
    from bessemer.config import load_config
    from bessemer.train.trainer import resolve_model_config

    over = []
    if args.preset:
        over.append(f"model.preset={args.preset!r}")
    if args.layers is not None:
        over.append(f"model.n_layers={args.layers}")
    if args.batch is not None:
        over += [f"train.micro_batch_size={args.batch}", "train.global_batch_size=0"]
    if args.compile:
        over.append("parallel.compile=true")
    if args.dtype:
        over.append(f"train.dtype={args.dtype!r}")
    over += [
        "checkpoint.interval=0",
        "checkpoint.resume=false",
        "train.finetune=''",
        f"train.steps={args.steps}",
    ]
    cfg = load_config(args.config, [*over, *args.overrides])
    max_len = resolve_model_config(cfg).max_seq_len
    seq_len = args.seq_len or min(cfg.train.seq_len, max_len)
    if seq_len > max_len:
        cfg.model.overrides["max_seq_len"] = seq_len
    cfg.train.seq_len = seq_len
    before = run_throughput(cfg, args.warmup, baseline=True)[0] if args.baseline else None
    result, trainer = run_throughput(cfg, args.warmup)
    if trainer.rank != 0:
        return 0
    mc = trainer.model_cfg
    dtype = str(trainer.amp_dtype or torch.float32).removeprefix("torch.")
    print(
        f"bench {cfg.model.preset}: {mc.n_layers} layers, dim {mc.dim}, seq {seq_len}, "
        f"batch {cfg.train.micro_batch_size} x {trainer.dims.world_size} device(s), {dtype}, "
        f"{'compiled' if cfg.parallel.compile else 'eager'}, {trainer.device}; "
        f"median of {result.measured_steps} steps after {args.warmup} warm-up"
    )
    print(f"tokens/s/device  {result.tokens_per_s_per_device:,.0f}")
    if before is not None:
        print(
            f"baseline         {before.tokens_per_s_per_device:,.0f} tokens/s/device, {before.step_time_s:.4f} s "
            f"a step (every step synced, no prefetch, foreach AdamW, torch cross-entropy): "
            f"{result.tokens_per_s_per_device / before.tokens_per_s_per_device:.2f}x now"
        )
    print(f"step time        {result.step_time_s:.4f} s")
    mfu = (
        f"{100 * result.mfu:.1f}%"
        if result.mfu is not None
        else f"n/a (no peak FLOP/s known for {trainer.device})"
    )
    print(f"MFU              {mfu}")
    for key, value in result.memory_gib.items():
        print(f"peak memory      {value:.2f} GiB ({key.removesuffix('_gib')})")
    return 0
