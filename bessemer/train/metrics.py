"""Throughput facts: tokens/s per device, model FLOPs utilisation, memory.

FLOPs per trained token = 6 x N + 6 x layers x heads x head_dim x seq_len, where N counts every matmul
parameter (all but the input embedding) and the second term is attention's QK^T and AV (forward + backward,
causal attention counted in full, as torchtitan does since 2026). MFU divides achieved FLOP/s by the device's
dense bf16 peak (bessemer.device); devices missing from its table (CPUs included) report no MFU rather than a
made-up one.
"""

from __future__ import annotations

from bessemer.models import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward)."""
    attention = 6 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len
    return 6 * cfg.num_params(embeddings=False) + attention
