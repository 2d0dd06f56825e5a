"""Throughput facts: tokens/s per device, model FLOPs utilisation, memory.

FLOPs per trained token = 6 x N + 6 x layers x heads x head_dim x seq_len, where N counts every matmul
parameter (all but the input embedding) and the second term is attention's QK^T and AV (forward + backward,
causal attention counted in full, as torchtitan does since 2026). MFU divides achieved FLOP/s by the device's
dense bf16 peak; devices missing from the table (CPUs included) report no MFU rather than a made-up one.
"""

from __future__ import annotations

import os
import resource

import torch

from bessemer.models import ModelConfig

# Dense bf16 peak FLOP/s (not the "with sparsity" figures), matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward)."""
    attention = 6 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len
    return 6 * cfg.num_params(embeddings=False) + attention


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def memory_gib(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return {
            "mem_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "mem_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_peak_gib": rss_kib / 2**20}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
