"""Rotary position embedding (the Hugging Face "rotate half" layout) with linear, dynamic-NTK and llama3 scaling."""

from __future__ import annotations

import math

import torch

from bessemer.models.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies for positions within the trained context (dynamic scaling adjusts later)."""
    hd = cfg.dim_per_head
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd)
    )
    if cfg.rope_scaling == "linear":
        inv_freq = inv_freq / cfg.rope_factor
    elif cfg.rope_scaling == "llama3":
        inv_freq = _llama3_scale(inv_freq, cfg)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, and the band between blended smoothly.
    orig = cfg.rope_original_max_seq_len or cfg.max_seq_len
    low_wavelen = orig / cfg.rope_low_freq_factor
    high_wavelen = orig / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (orig / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
    )
    blended = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, blended, scaled)


def rope_cos_sin(
    cfg: ModelConfig, inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [B, T, head_dim] for integer `positions` [B, T], computed in fp32.

    Dynamic NTK scaling picks each row's frequencies from that row's longest position, as transformers does
    for one sequence, so a row's rotation does not depend on what else is in the batch."""
    inv_freq = inv_freq.float().to(positions.device)
    if cfg.rope_scaling == "dynamic":
        orig = cfg.rope_original_max_seq_len or cfg.max_seq_len
        seq_len = positions.amax(-1, keepdim=True).float() + 1  # [B, 1]
        # NTK-aware: past the trained context, raise the base so the longest wavelength covers the sequence
        hd = cfg.dim_per_head
        stretch = (cfg.rope_factor * seq_len / orig - (cfg.rope_factor - 1)).clamp(min=1)
        base = cfg.rope_theta * stretch ** (hd / (hd - 2))
        exps = torch.arange(0, hd, 2, dtype=torch.int64, device=positions.device).float() / hd
        inv_freq = torch.where((seq_len > orig)[..., None], 1.0 / (base[..., None] ** exps), inv_freq)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, H, T, D] by angles given as cos/sin [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
