"""Fine-tuning cost: peak memory and tokens/s of full fine-tuning vs LoRA, same model, batch and start weights.

Each method runs in its own child process (peak RSS on CPU only ever grows within a process), on synthetic
tokens through the trainer's own step; the parent prints both and LoRA's ratios against full fine-tuning.
    python benchmarks/finetune.py --preset tiny --layers 4 --seq-len 256 --batch 2           # CPU smoke
    python benchmarks/finetune.py --preset llama2-7b --seq-len 2048 --batch 1 --dtype bfloat16  # one GPU
Goal (issue 14): LoRA peak memory <= 40% of full fine-tuning's at 1B and above, tokens/s >= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bessemer.bench.throughput import run_throughput
from bessemer.config import load_config
from bessemer.models import build_model, get_preset

METHODS = ("full", "lora")


def measure(args: argparse.Namespace) -> dict:
    over = [
        f"model.preset={args.preset!r}",
        f"train.seq_len={args.seq_len}",
        f"train.micro_batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"train.dtype={args.dtype!r}",
        f"train.finetune={args.base!r}",
        "checkpoint.interval=0",
        "optim.lr=1e-4",
    ]
    if args.method == "lora":
        over += [f"lora.rank={args.rank}", 'lora.targets=["q","k","v","o","gate","up","down"]']
    cfg = load_config(None, over)
    result, trainer = run_throughput(cfg, args.warmup)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "tokens_per_s": result.tokens_per_s_per_device,
        "memory_gib": max(result.memory_gib.values()),
        "memory_kind": next(iter(result.memory_gib)),
        "trainable": trainable,
        "device": str(trainer.device),
    }


def write_base(args: argparse.Namespace, folder: Path) -> None:
    """The start weights both methods fine-tune: the preset initialised from a seed, saved as a checkpoint."""
    from bessemer.tune.peft_io import write_model_checkpoint

    write_model_checkpoint(build_model(model_config(args), seed=0), folder, {"source": "benchmark"})


def model_config(args: argparse.Namespace):
    overrides = {"n_layers": args.layers} if args.layers else {}
    if args.seq_len > get_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq_len
    return get_preset(args.preset, **overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # set in the child processes
    p.add_argument("--base", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        print(json.dumps(measure(args)))
        return
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        base = Path(tmp) / "base"
        write_base(args, base)
        results = {}
        for method in METHODS:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--base", str(base)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    cfg = model_config(args)
    print(
        f"shape: {args.preset} {cfg.n_layers} layers, dim {cfg.dim}, seq {args.seq_len}, batch {args.batch}, "
        f"dtype {args.dtype}, LoRA rank {args.rank} on q,k,v,o,gate,up,down, {full['device']}, torch {torch.__version__}"
    )
    for name, r in results.items():
        print(
            f"{name:5s} trainable {r['trainable']:>13,}  tokens/s {r['tokens_per_s']:>10,.0f}  "
            f"peak {r['memory_kind']} {r['memory_gib']:.3f} GiB"
        )
    print(
        f"LoRA / full: memory {lora['memory_gib'] / full['memory_gib']:.2f}x, "
        f"tokens/s {lora['tokens_per_s'] / full['tokens_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
