"""Training throughput: a Bessemer training step vs transformers' LlamaForCausalLM of the same shape.

Same process, same synthetic batches, same optimizer (AdamW), same dtype; prints tokens/s of each and the ratio.
    python benchmarks/train_vs_hf.py --preset tiny --layers 2 --seq-len 256 --batch 2          # CPU smoke
    python benchmarks/train_vs_hf.py --preset llama-1b --seq-len 4096 --dtype bfloat16 --compile  # one GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bessemer import device as devices
from bessemer.bench.throughput import SyntheticBatches, run_throughput
from bessemer.config import load_config
from bessemer.models import get_preset


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


def hf_throughput(cfg, args, device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """Median tokens/s and first-step loss of the HF model trained like Bessemer's trainer trains."""
    model = hf_model(cfg, device).train()
    if args.compile:
        for layer in model.model.layers:
            layer.compile()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=3e-4,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        fused=devices.supports_fused_optimizer(device),
    )
    data = SyntheticBatches(cfg.vocab_size, args.seq_len, args.batch, seed=1234)  # the trainer's default seed
    times, first_loss = [], None
    for _ in range(args.steps):
        devices.synchronize(device)
        started = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(data).items()}
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
            logits = model(input_ids=batch["tokens"], position_ids=batch["positions"]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        devices.synchronize(device)
        times.append(time.perf_counter() - started)
        first_loss = first_loss if first_loss is not None else float(loss)
    step = statistics.median(times[args.warmup :])
    return args.batch * args.seq_len / step, first_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    over = [
        f"model.preset={args.preset!r}",
        f"train.seq_len={args.seq_len}",
        f"train.micro_batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"train.dtype={args.dtype!r}",
        "checkpoint.interval=0",
        "optim.lr=3e-4",
        f"parallel.compile={'true' if args.compile else 'false'}",
    ]
    overrides = {"n_layers": args.layers} if args.layers else {}
    if args.seq_len > get_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq_len
    cfg = load_config(None, over)
    cfg.model.overrides.update(overrides)
    ours, trainer = run_throughput(cfg, args.warmup)
    theirs, hf_first = hf_throughput(trainer.model_cfg, args, trainer.device, trainer.amp_dtype)
    mc = trainer.model_cfg
    print(
        f"shape: {args.preset} {mc.n_layers} layers, dim {mc.dim}, seq {args.seq_len}, batch {args.batch}, "
        f"{trainer.amp_dtype or torch.float32}, {'compiled' if args.compile else 'eager'}, {trainer.device}"
    )
    print(f"first-step loss   bessemer {ours.losses[0]:.4f}   transformers {hf_first:.4f}")
    print(f"tokens/s          bessemer {ours.tokens_per_s_per_device:,.0f}   transformers {theirs:,.0f}")
    print(f"ratio             {ours.tokens_per_s_per_device / theirs:.2f}x (bessemer / transformers)")


if __name__ == "__main__":
    main()
