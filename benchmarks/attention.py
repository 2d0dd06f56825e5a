"""Masked attention: dense masks (the reference path) vs FlexAttention block masks, time and peak memory.

The mask is Mistral's packed-SFT case: a sliding window inside each document (4 documents per row). Both paths
include building their mask, as the model does every forward. On an accelerator with FlexAttention kernels the
block path is compiled and runs forward + backward; on a CPU, torch 2.13's FlexAttention has no backward, so
both paths run forward only (block path compiled for the CPU). Prints one line per length and the ratios.

    python benchmarks/attention.py                      # accelerator: seq 4K, 8K, 32K, window 4K
    python benchmarks/attention.py --seq 1024 2048 4096 --window 1024   # what fits a small CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bessemer import device as devices  # noqa: E402
from bessemer.models import ModelConfig  # noqa: E402
from bessemer.models.attention import build_attention_mask, build_flex_mask  # noqa: E402


class PeakMemory:
    """Peak bytes above the starting point: the allocator's on an accelerator, the resident set on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if devices.is_accelerator(self.device):
            devices.synchronize(self.device)
            devices.reset_peak_memory(self.device)
            self.start = torch.accelerator.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux)
            self.start = psutil.Process().memory_info().rss
        return self

    def __exit__(self, *exc):
        if devices.is_accelerator(self.device):
            devices.synchronize(self.device)
            self.peak = torch.accelerator.max_memory_allocated(self.device) - self.start
        else:
            status = Path("/proc/self/status").read_text().splitlines()
            hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
            self.peak = hwm - self.start


def inputs(args, seq: int, device: torch.device, dtype: torch.dtype, grad: bool):
    shape = (args.batch, args.heads, seq, args.head_dim)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    doc_len = seq // 4
    doc_ids = (torch.arange(seq, device=device) // doc_len).expand(args.batch, seq)
    positions = (torch.arange(seq, device=device) % doc_len).expand(args.batch, seq)
    return [t.requires_grad_(grad) for t in (q, k, v)], positions, doc_ids


def run_dense(cfg, q, k, v, positions, doc_ids, backward: bool):
    mask = build_attention_mask(cfg, positions, positions, doc_ids, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backward:
        out.sum().backward()


def run_block(cfg, flex, q, k, v, positions, doc_ids, backward: bool):
    mask = build_flex_mask(cfg, positions, doc_ids)
    out = flex(q, k, v, block_mask=mask.block_mask, score_mod=mask.score_mod)
    if backward:
        out.sum().backward()


def measure(fn, device: torch.device, repeats: int) -> tuple[float, int]:
    fn()  # warm-up (compiles the block path)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            devices.synchronize(device)
            started = time.perf_counter()
            fn()
            devices.synchronize(device)
            times.append(time.perf_counter() - started)
    return statistics.median(times), mem.peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--seq", type=int, nargs="+", help="lengths (default 4096 8192 32768; CPU 1024 2048 4096)")
    p.add_argument("--window", type=int, help="sliding window (default 4096; CPU 1024)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default bfloat16 (CPU float32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-dense-above", type=int, default=0, help="skip the dense path above this length")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    device = devices.pick_device(args.device)
    accel = devices.supports_flex_attention(device)
    if not devices.is_accelerator(device):
        args.heads = min(args.heads, 8)
        args.head_dim = min(args.head_dim, 64)
    seqs = args.seq or ([4096, 8192, 32768] if accel else [1024, 2048, 4096])
    window = args.window or (4096 if accel else 1024)
    dtype = (
        torch.bfloat16
        if (args.dtype or ("bfloat16" if accel else "float32")) == "bfloat16"
        else torch.float32
    )
    cfg = ModelConfig(
        dim=args.heads * args.head_dim, n_heads=args.heads, sliding_window=window, max_seq_len=max(seqs)
    )
    flex = torch.compile(flex_attention, dynamic=False)
    backward = accel
    print(
        f"attention on {devices.device_name(device)}: batch {args.batch}, {args.heads} heads x {args.head_dim}, "
        f"{dtype}, window {window} within 4 documents per row, {'forward + backward' if backward else 'forward'}"
    )
    print(
        f"{'seq':>6}  {'dense ms':>9} {'dense MiB':>10}  {'block ms':>9} {'block MiB':>10}  speed-up  memory"
    )
    for seq in seqs:
        (q, k, v), positions, doc_ids = inputs(args, seq, device, dtype, backward)
        block = partial(run_block, cfg, flex, q, k, v, positions, doc_ids, backward)
        b_time, b_mem = measure(block, device, args.repeats)
        if args.no_dense_above and seq > args.no_dense_above:
            print(f"{seq:>6}  {'-':>9} {'-':>10}  {b_time * 1e3:>9.1f} {b_mem / 2**20:>10.0f}")
            continue
        dense = partial(run_dense, cfg, q, k, v, positions, doc_ids, backward)
        d_time, d_mem = measure(dense, device, args.repeats)
        # a CPU's resident set moves in whole pages and reuses freed memory: under 1 MiB is below what it resolves
        memory = f"{d_mem / b_mem:>5.1f}x" if b_mem >= 2**20 else "  n/a"
        print(
            f"{seq:>6}  {d_time * 1e3:>9.1f} {d_mem / 2**20:>10.0f}  {b_time * 1e3:>9.1f} {b_mem / 2**20:>10.0f}  "
            f"{d_time / b_time:>7.2f}x  {memory}"
        )


if __name__ == "__main__":
    main()
