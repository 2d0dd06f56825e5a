"""What a resumed run keeps from its checkpoint and what it takes from the new config.

The checkpoint's train state records the settings that shaped the run. On `--resume` the weights, the optimizer
moments, the step and the data position come from the checkpoint; the hyper-parameters (lr, betas, eps, weight
decay, schedule, clipping) come from the config, as its user wrote them, and a changed one is named in one
warning line. A change the data order cannot follow (seed, seq_len) is refused in one line before anything loads.
"""

from __future__ import annotations

import logging

import torch

from bessemer.config import JobConfig, to_dict
from bessemer.errors import ConfigError

log = logging.getLogger(__name__)

# the settings recorded in a checkpoint and compared on resume; a layout change (parallel.*) is supported as such
RECORDED = {
    "model": None,
    "data": None,
    "optim": None,
    "schedule": None,
    "train": ("steps", "seq_len", "micro_batch_size", "global_batch_size", "grad_clip", "seed", "dtype"),
    "lora": None,
    "dpo": None,
}
# these fix the sample order: a resumed run under other values would train on other samples than it records
REFUSED = ("train.seed", "train.seq_len")


def record(cfg: JobConfig) -> dict:
    """The settings saved with a checkpoint (flat `section.key` names, JSON values)."""
    full = to_dict(cfg)
    out = {}
    for section, keys in RECORDED.items():
        for key, value in full[section].items():
            if keys is None or key in keys:
                out[f"{section}.{key}"] = value
    return out


def changes(saved: dict | None, cfg: JobConfig) -> dict[str, tuple]:
    """{key: (checkpoint's value, config's value)} for each recorded setting that differs."""
    if not isinstance(saved, dict):
        return {}  # a checkpoint of an older Bessemer records none
    now = record(cfg)
    return {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v}


def check_changes(saved: dict | None, cfg: JobConfig, ckpt) -> None:
    """Refuse a change the data order cannot follow; name every other change in one warning line."""
    diff = changes(saved, cfg)
    for key in REFUSED:
        if key in diff:
            old, new = diff[key]
            raise ConfigError(
                f"{ckpt}: was trained with {key}={old!r}, this run has {new!r}; the sample order depends on it: "
                f"resume with {key}={old!r}, or start a new run from these weights with --finetune"
            )
    if diff:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())
        log.warning("resuming %s with a changed config (the new values apply from here): %s", ckpt, listed)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, groups: list[dict], scheduler, lr: float) -> None:
    """After loading a checkpoint, put the config's hyper-parameters back into the optimizer and schedule.

    groups: each param group's betas/eps/weight_decay as built from the config (the checkpoint's overwrote them).
    The schedule keeps its step count; its peak becomes `lr`, so the lr is the one the config gives at that step.
    """
    for group, built in zip(optimizer.param_groups, groups):
        group.update(built)
        group["initial_lr"] = lr
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, factor in zip(optimizer.param_groups, factors):
        group["lr"] = lr * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's betas, eps and weight decay (taken before a checkpoint overwrites them)."""
    return [{k: g[k] for k in ("betas", "eps", "weight_decay")} for g in optimizer.param_groups]
