"""Training throughput: a Bessemer training step vs transformers' LlamaForCausalLM and litgpt's GPT of one shape.

Same process, same synthetic batches, same optimizer (AdamW), same dtype; prints tokens/s of each and the ratios.
Each reference is trained the way its own project trains: transformers like Bessemer's step (plain cross-entropy,
clip at 1.0, AdamW fused where the device has the kernel); litgpt like its `pretrain.py` (its chunked
cross-entropy, clip at 1.0, torch's default AdamW, which is fused on CUDA only). With --litgpt, litgpt 0.5.13 and
the packages its modules import (lightning, lightning-utilities, torchmetrics, jsonargparse) are fetched once with
`pip download --no-deps` into build/litgpt/ and imported from there, never installed.

    python benchmarks/train_vs_hf.py --hidden 256 --layers 4 --heads 4 --kv-heads 4 --ffn 688 --vocab 32000 \
        --batch 8 --seq 256 --dtype float32 --litgpt                                     # the issue-12 CPU shape
    python benchmarks/train_vs_hf.py --preset llama-1b --seq 4096 --batch 1 --dtype bfloat16 --compile  # one GPU
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bessemer import device as devices
from bessemer.bench.throughput import SyntheticBatches
from bessemer.config import load_config
from bessemer.models import get_preset
from bessemer.train.trainer import Trainer

LITGPT = ["litgpt==0.5.13", "lightning==2.6.6", "lightning-utilities==0.15.3", "torchmetrics==1.9.0"]
LITGPT += ["jsonargparse==4.53.0"]
LITGPT_DIR = Path(__file__).resolve().parents[1] / "build" / "litgpt"


def hf_model(cfg, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        return LlamaForCausalLM(hf_cfg)


def litgpt_model(cfg, device: torch.device):
    """litgpt's GPT (its own attention on SDPA, LLaMAMLP, RMSNorm, RoPE) in Bessemer's shape."""
    if not (LITGPT_DIR / "site" / "litgpt").is_dir():
        wheels = LITGPT_DIR / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *LITGPT]
        subprocess.run(cmd, check=True)
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(LITGPT_DIR / "site")
    sys.path.insert(0, str(LITGPT_DIR / "site"))
    from litgpt.config import Config
    from litgpt.model import GPT

    lit_cfg = Config(
        name="bessemer-shape",
        block_size=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        padded_vocab_size=cfg.vocab_size,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_query_groups=cfg.kv_heads,
        head_size=cfg.dim_per_head,
        n_embd=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=cfg.norm_eps,
        mlp_class_name="LLaMAMLP",
        rope_base=int(cfg.rope_theta),
    )
    with torch.device(device):
        return GPT(lit_cfg)


def reference_step(kind: str, cfg, args, device: torch.device, amp):
    """One training step of a reference model as its project trains it; returns (step, first-loss holder)."""
    if kind == "transformers":
        model = hf_model(cfg, device).train()
        blocks = model.model.layers
        fused = devices.supports_fused_optimizer(device)
    else:
        model = litgpt_model(cfg, device).train()
        model.max_seq_length = args.seq
        blocks = model.transformer.h
        fused = device.type == "cuda"  # litgpt/pretrain.py
        from litgpt.utils import chunked_cross_entropy
    if args.compile:
        for block in blocks:
            block.compile()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused or None
    )
    data = SyntheticBatches(cfg.vocab_size, args.seq, args.batch, seed=1234)  # the trainer's default seed
    losses: list[float] = []

    def step() -> None:
        batch = {k: v.to(device) for k, v in next(data).items()}
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
            if kind == "transformers":
                logits = model(input_ids=batch["tokens"], position_ids=batch["positions"]).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
            else:
                loss = chunked_cross_entropy(model(batch["tokens"]), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not losses:
            losses.append(float(loss.detach()))

    return step, losses


def bessemer_step(trainer):
    """The trainer's own step, logged (read on the host) only at the first call, as the training loop does."""
    losses: list[float] = []

    def step() -> None:
        metrics = trainer.train_step(log_metrics=not losses)
        if not losses:
            losses.append(metrics["loss"])
        trainer.step += 1

    return step, losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="shape to start from; the flags below override it")
    p.add_argument("--hidden", type=int, help="model width (model.dim)")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int, help="key/value heads (grouped-query attention when < --heads)")
    p.add_argument("--ffn", type=int, help="MLP hidden size")
    p.add_argument("--vocab", type=int)
    p.add_argument("--seq", "--seq-len", dest="seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--litgpt", action="store_true", help="also train litgpt 0.5.13's GPT (fetched into build/)"
    )
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps={args.steps} must exceed --warmup={args.warmup}")
    return args


def main() -> None:
    args = parse_args()

    over = [
        f"model.preset={args.preset!r}",
        f"train.seq_len={args.seq}",
        f"train.micro_batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"train.dtype={args.dtype!r}",
        "checkpoint.interval=0",
        "optim.lr=3e-4",
        f"parallel.compile={'true' if args.compile else 'false'}",
    ]
    shape = {
        "dim": args.hidden,
        "n_layers": args.layers,
        "n_heads": args.heads,
        "n_kv_heads": args.kv_heads,
        "ffn_dim": args.ffn,
        "vocab_size": args.vocab,
    }
    overrides = {k: v for k, v in shape.items() if v is not None}
    if args.seq > get_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq
    cfg = load_config(None, over)
    cfg.model.overrides.update(overrides)
    cfg.train.steps = max(args.steps, 1)
    trainer = Trainer(
        cfg, data_factory=lambda t: SyntheticBatches(t.model_cfg.vocab_size, args.seq, args.batch, 1234)
    )
    mc, device, amp = trainer.model_cfg, trainer.device, trainer.amp_dtype
    runs = {"bessemer": bessemer_step(trainer)}
    runs["transformers"] = reference_step("transformers", mc, args, device, amp)
    if args.litgpt:
        runs["litgpt"] = reference_step("litgpt", mc, args, device, amp)
    # round robin: a step of each in turn, so a change in the machine's load touches every model alike
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, (step, _) in runs.items():
            devices.synchronize(device)
            started = time.perf_counter()
            step()
            devices.synchronize(device)
            times[name].append(time.perf_counter() - started)
    tps = {name: args.batch * args.seq / statistics.median(t[args.warmup :]) for name, t in times.items()}
    trainer.data.close()
    print(
        f"shape: hidden {mc.dim}, {mc.n_layers} layers, {mc.n_heads} heads ({mc.kv_heads} kv), ffn {mc.ffn_dim}, "
        f"vocab {mc.vocab_size}, batch {args.batch} x {args.seq}, {amp or torch.float32}, "
        f"{'compiled' if args.compile else 'eager'}, {device}, {torch.get_num_threads()} threads"
    )
    print("first-step loss   " + "   ".join(f"{name} {runs[name][1][0]:.4f}" for name in runs))
    print("tokens/s          " + "   ".join(f"{name} {v:,.0f}" for name, v in tps.items()))
    for name in runs:
        if name != "bessemer":
            print(f"ratio             {tps['bessemer'] / tps[name]:.2f}x (bessemer / {name})")
    print(f"median of {args.steps - args.warmup} steps each after {args.warmup} warm-up, taken in turn")


if __name__ == "__main__":
    main()
