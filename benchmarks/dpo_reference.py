"""DPO without LoRA, two references: a frozen copy of the model (`frozen`) against a table of its log-probabilities
computed in a first pass (`precomputed`): peak memory and tokens/s of the same steps, and the first pass's time.

Each reference runs in its own child process (peak RSS on CPU only ever grows within a process), on a
synthetic preference dataset through the trainer's own step; the parent prints both and the ratios.
    python benchmarks/dpo_reference.py --preset tiny --layers 4 --seq-len 128 --pairs 2     # CPU smoke
    python benchmarks/dpo_reference.py --preset llama2-7b --layers 8 --seq-len 2048 --pairs 1 --dtype bfloat16
The precomputed run holds no second model, so its peak is lower by about one copy of the weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bessemer.config import load_config
from bessemer.data.indexed import IndexedDatasetWriter, mask_prefix, meta_path
from bessemer.models import build_model, get_preset
from bessemer.train.trainer import Trainer

REFERENCES = ("frozen", "precomputed")


def model_config(args: argparse.Namespace):
    overrides = {"n_layers": args.layers} if args.layers else {}
    if args.seq_len > get_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq_len
    return get_preset(args.preset, **overrides)


def write_inputs(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The start checkpoint (the preset from a seed) and pairs of random answers to a shared prompt."""
    from bessemer.tune.peft_io import write_model_checkpoint

    cfg = model_config(args)
    base = folder / "base"
    write_model_checkpoint(build_model(cfg, seed=0), base, {"source": "benchmark"})
    prefix = folder / "pairs"
    rng = np.random.default_rng(0)
    dtype = np.uint16 if cfg.vocab_size < 65_500 else np.int32
    half = (args.seq_len + 1) // 2
    with (
        IndexedDatasetWriter(prefix, dtype) as docs,
        IndexedDatasetWriter(mask_prefix(prefix), np.uint8) as masks,
    ):
        for _ in range(args.pairs * args.steps):
            prompt = rng.integers(0, cfg.vocab_size, half)
            for _ in range(2):
                answer = rng.integers(0, cfg.vocab_size, args.seq_len + 1 - half)
                docs.add_document(np.concatenate([prompt, answer]).astype(dtype))
                masks.add_document(np.asarray([0] * half + [1] * len(answer), dtype=np.uint8))
    meta_path(prefix).write_text(json.dumps({"handler": "preference", "pairs": args.pairs * args.steps}))
    return base, prefix


def measure(args: argparse.Namespace) -> dict:
    over = [
        f"train.seq_len={args.seq_len}",
        f"train.micro_batch_size={args.pairs}",
        f"train.steps={args.steps}",
        f"train.dtype={args.dtype!r}",
        f"train.finetune={args.base!r}",
        f"train.out_dir={str(Path(args.data).parent / args.reference)!r}",
        f"data.paths=[{args.data!r}]",
        "checkpoint.interval=0",
        "optim.lr=1e-5",
        "dpo.enabled=true",
        f"dpo.reference={args.reference!r}",
    ]
    started = time.perf_counter()
    trainer = Trainer(load_config(None, over))
    setup_s = time.perf_counter() - started
    records = []
    for _ in range(args.steps):
        records.append(trainer.train_step())
        trainer.step += 1
    step_time = statistics.median(r["step_time_s"] for r in records[args.warmup :])
    memory = {k: max(r[k] for r in records) for k in records[0] if k.startswith(("mem_", "rss_"))}
    return {
        "tokens_per_s": 2 * trainer.global_batch_size * args.seq_len / step_time,
        "memory_gib": max(memory.values()),
        "memory_kind": next(iter(memory)),
        "setup_s": setup_s,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "device": str(trainer.device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--pairs", type=int, default=2, help="pairs per step")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--reference", choices=REFERENCES, help=argparse.SUPPRESS)  # set in the child processes
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference:
        print(json.dumps(measure(args)))
        return
    with tempfile.TemporaryDirectory(prefix="dpo-reference-bench-") as tmp:
        base, data = write_inputs(args, Path(tmp))
        results = {}
        for reference in REFERENCES:
            extra = ["--reference", reference, "--base", str(base), "--data", str(data)]
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], *extra], check=True, capture_output=True, text=True
            ).stdout
            results[reference] = json.loads(out.strip().splitlines()[-1])
    frozen, pre = results["frozen"], results["precomputed"]
    cfg = model_config(args)
    print(
        f"shape: {args.preset} {cfg.n_layers} layers, dim {cfg.dim}, {frozen['params']:,} parameters, seq "
        f"{args.seq_len}, {args.pairs} pairs per step, dtype {args.dtype}, {frozen['device']}, torch {torch.__version__}"
    )
    for name, r in results.items():
        print(
            f"{name:11s} tokens/s {r['tokens_per_s']:>10,.0f}  peak {r['memory_kind']} {r['memory_gib']:.3f} GiB  "
            f"set-up {r['setup_s']:.1f} s"
        )
    print(
        f"precomputed / frozen: memory {pre['memory_gib'] / frozen['memory_gib']:.2f}x, "
        f"tokens/s {pre['tokens_per_s'] / frozen['tokens_per_s']:.2f}x "
        f"(set-up includes the first pass over {args.pairs * args.steps} pairs)"
    )


if __name__ == "__main__":
    main()
