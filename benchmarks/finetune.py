"""Fine-tuning cost: peak memory and tokens/s of full fine-tuning, LoRA (fp32 base, and the frozen base in bf16:
`lora.base_dtype`) and DPO with LoRA, same model, batch (sequences per step; DPO's are pairs of half as many
prompts) and start weights.

Each method runs in its own child process (peak RSS on CPU only ever grows within a process), on synthetic
tokens through the trainer's own step; the parent prints both and LoRA's ratios against full fine-tuning.
    python benchmarks/finetune.py --preset tiny --layers 4 --seq-len 256 --batch 2           # CPU smoke
    python benchmarks/finetune.py --preset llama-1b --seq-len 128 --batch 1 --steps 3 --warmup 1 \
        --methods full,lora,dpo-lora                                  # 1.1B on CPU: ~19 GiB, ~5 min
    python benchmarks/finetune.py --preset llama2-7b --seq-len 2048 --batch 1 --dtype bfloat16  # one GPU
On a CPU without bf16 matrix kernels (no AVX512-BF16/AMX) lora-bf16 saves memory but runs several times slower;
the CPU figure is the process's peak resident set, torch itself (~0.3 GiB) included.
Goal (issue 14): LoRA peak memory <= 40% of full fine-tuning's at 1B and above, tokens/s >= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bessemer.bench.throughput import run_throughput
from bessemer.config import load_config
from bessemer.models import build_model, get_preset
from bessemer.train.trainer import Trainer

METHODS = ("full", "lora", "lora-bf16", "dpo-lora")


class SyntheticPairs:
    """Random preference micro-batches: rows [chosen..., rejected...] sharing a prompt of half the length."""

    def __init__(self, trainer):
        tc = trainer.cfg.train
        self.meta: dict = {}
        self.pairs, self.seq_len, self.vocab = tc.micro_batch_size, tc.seq_len, trainer.model_cfg.vocab_size
        self.generator = torch.Generator().manual_seed(tc.seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        n, t = self.pairs, self.seq_len + 1
        prompt = torch.randint(0, self.vocab, (n, t // 2), generator=self.generator)
        answers = torch.randint(0, self.vocab, (2 * n, t - t // 2), generator=self.generator)
        ids = torch.cat([prompt.repeat(2, 1), answers], dim=1)
        labels = ids.clone()
        labels[:, : t // 2] = -100
        return {"tokens": ids[:, :-1], "labels": labels[:, 1:]}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


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
    if args.method != "full":
        over += [f"lora.rank={args.rank}", 'lora.targets=["q","k","v","o","gate","up","down"]']
    if args.method == "lora-bf16":
        over += ['lora.base_dtype="bfloat16"']
    if args.method == "dpo-lora":  # pairs: half the prompts, so the same sequences per step
        over += ["dpo.enabled=true", f"train.micro_batch_size={max(args.batch // 2, 1)}"]
        trainer = Trainer(load_config(None, over), data_factory=SyntheticPairs)
        records = []
        for _ in range(args.steps):
            records.append(trainer.train_step())
            trainer.step += 1
        step_time = statistics.median(r["step_time_s"] for r in records[args.warmup :])
        tokens_per_s = 2 * trainer.global_batch_size * args.seq_len / step_time
        memory = {k: max(r[k] for r in records) for k in records[0] if k.startswith(("mem_", "rss_"))}
    else:
        result, trainer = run_throughput(load_config(None, over), args.warmup)
        tokens_per_s, memory = result.tokens_per_s_per_device, result.memory_gib
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "tokens_per_s": tokens_per_s,
        "memory_gib": max(memory.values()),
        "memory_kind": next(iter(memory)),
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
    p.add_argument(
        "--methods", default=",".join(METHODS), help=f"some of {','.join(METHODS)}; full comes first"
    )
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
        methods = ["full", *(m for m in args.methods.split(",") if m != "full")]
        for method in methods:
            if method not in METHODS:
                sys.exit(f"--methods: {method!r} is not one of {', '.join(METHODS)}")
            cmd = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--base", str(base)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
    full = results["full"]
    cfg = model_config(args)
    print(
        f"shape: {args.preset} {cfg.n_layers} layers, dim {cfg.dim}, seq {args.seq_len}, batch {args.batch}, "
        f"dtype {args.dtype}, LoRA rank {args.rank} on q,k,v,o,gate,up,down, {full['device']}, torch {torch.__version__}"
    )
    for name, r in results.items():
        print(
            f"{name:9s} trainable {r['trainable']:>13,}  tokens/s {r['tokens_per_s']:>10,.0f}  "
            f"peak {r['memory_kind']} {r['memory_gib']:.3f} GiB"
        )
    for name in methods[1:]:
        r = results[name]
        print(
            f"{name} / full: memory {r['memory_gib'] / full['memory_gib']:.2f}x, "
            f"tokens/s {r['tokens_per_s'] / full['tokens_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
