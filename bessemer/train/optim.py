"""AdamW and the learning-rate schedule (linear warmup, then cosine or linear decay to a floor, or WSD)."""

from __future__ import annotations

import math

import torch

from bessemer.config import OptimSection, ScheduleSection
from bessemer.device import supports_fused_optimizer
from bessemer.errors import ConfigError


def build_optimizer(model: torch.nn.Module, cfg: OptimSection, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (norm weights are not decayed); fused where the device has the kernel
    (bessemer.device), foreach elsewhere."""
    if cfg.name.lower() != "adamw":
        raise ConfigError(f"optim.name={cfg.name!r}: only 'adamw' is supported")
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if supports_fused_optimizer(device) else "foreach"
    if impl not in ("fused", "foreach", "for-loop"):
        raise ConfigError(f"optim.implementation={impl!r}: use auto, fused, foreach or for-loop")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],  # an empty group (LoRA: no vectors train) breaks DCP's flattening
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=impl == "fused",
        foreach=impl == "foreach",
    )


def lr_factor(step: int, cfg: ScheduleSection, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based), as transformers' schedulers of the same
    names define it (get_{cosine,linear,constant}_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup):
    step / warmup_steps during warmup, so the first step runs at lr 0 and the peak is reached at step
    warmup_steps; then the decay to min_lr_ratio by decay_steps (0: train.steps)."""
    if cfg.decay == "wsd":
        return _wsd_factor(step, cfg, total_steps)
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    decay_steps = (cfg.decay_steps or total_steps) - cfg.warmup_steps
    if cfg.decay == "constant" or decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.decay == "linear":
        shape = 1 - progress
    else:
        raise ConfigError(f"schedule.decay={cfg.decay!r}: use cosine, linear, constant or wsd")
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def _wsd_factor(step: int, cfg: ScheduleSection, total_steps: int) -> float:
    """Warmup-stable-decay as transformers' get_wsd_schedule (linear warmup from min_lr_ratio, cosine decay):
    the last `decay_steps` steps decay to min_lr_ratio, the steps between warmup and them hold the peak."""
    floor = cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return floor + (1 - floor) * step / cfg.warmup_steps
    decay_start = total_steps - cfg.decay_steps
    if step < decay_start:
        return 1.0
    if step < total_steps:
        progress = (step - decay_start) / cfg.decay_steps
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.decay == "wsd" and not 0 < cfg.decay_steps <= total_steps - cfg.warmup_steps:
        raise ConfigError(
            f"schedule.decay=wsd needs schedule.decay_steps (the final decay's length) between 1 and train.steps - "
            f"warmup_steps = {total_steps - cfg.warmup_steps}; got {cfg.decay_steps}"
        )
    lr_factor(cfg.warmup_steps, cfg, total_steps)  # validate the decay name now, not mid-run
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.found_inf` (a 0/1 tensor) skips a step inside the kernel: the fused AdamW's contract
    with torch's GradScaler, which leaves weights, moments and step counts untouched when it is 1."""
    return getattr(optimizer, "_step_supports_amp_scaling", False) and all(
        g.get("fused") for g in optimizer.param_groups
    )
