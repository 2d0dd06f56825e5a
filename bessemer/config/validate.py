"""Value checks for the config tree, run once after loading: a bad value fails here in one line, not mid-run."""

from __future__ import annotations

import difflib
import math

from bessemer.errors import ConfigError

# "section.key": (lowest, highest, what a user should know); None: unbounded on that side
RANGES: dict[str, tuple[float | None, float | None]] = {
    "train.steps": (0, None),
    "train.seq_len": (1, 1 << 24),
    "train.micro_batch_size": (1, 1 << 20),
    "train.global_batch_size": (0, 1 << 30),
    "train.grad_clip": (0, None),
    "optim.lr": (0, 1e3),
    "optim.eps": (0, 1),
    "optim.weight_decay": (0, None),
    "schedule.warmup_steps": (0, None),
    "schedule.min_lr_ratio": (0, 1),
    "schedule.decay_steps": (0, None),
    "checkpoint.interval": (0, None),
    "checkpoint.keep": (0, None),
    "log.interval": (1, None),
    "parallel.dp_replicate": (1, 1 << 16),
    "parallel.tp": (1, 1 << 16),
    "parallel.pp": (1, 1 << 16),
    "parallel.cp": (1, 1 << 16),
    "parallel.pp_microbatches": (0, 1 << 20),
    "parallel.pp_stages_per_rank": (1, 1024),
    "parallel.timeout_s": (1, None),
    "generate.max_new_tokens": (0, 1 << 24),
    "generate.temperature": (0, None),
    "generate.top_k": (0, None),
    "generate.top_p": (0, 1),
    "generate.repetition_penalty": (0, None),
    "serve.port": (0, 65535),
}
# "section.key": the values a key takes; a typo is refused at load time with the nearest one, not mid-run (or,
# for keys read only in some layouts, never: parallel.pp_schedule with pp=1)
CHOICES: dict[str, tuple[str, ...]] = {
    "train.nan_policy": ("stop", "skip"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "schedule.decay": ("cosine", "linear", "constant", "wsd"),
    "optim.implementation": ("auto", "fused", "foreach", "for-loop"),
    "parallel.pp_schedule": ("GPipe", "1F1B", "Interleaved1F1B"),
    "parallel.activation_checkpoint": ("none", "full", "selective"),
    "parallel.param_dtype": ("auto", "float32", "bfloat16", "float16"),
    "parallel.reduce_dtype": ("auto", "float32", "bfloat16", "float16"),
}
# zero is not allowed for these although the range starts at 0 (it is the open end of the interval)
POSITIVE = {"optim.eps", "generate.top_p", "generate.repetition_penalty"}


def check_finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{name}: {value} is not a finite number; give a real value")
    return value


def check_ranges(cfg, where: str) -> None:
    """Refuse values outside RANGES, naming the key and the allowed range."""
    for key, (low, high) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key in POSITIVE and value <= 0:
            raise ConfigError(f"{where}: {key}={value} must be greater than 0")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low if low is not None else '-inf'} to {high if high is not None else 'inf'}"
            raise ConfigError(f"{where}: {key}={value} is out of range ({span})")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: {key}={value!r}: use one of {', '.join(allowed)}{hint}")
    dp_shard = cfg.parallel.dp_shard
    if dp_shard == 0 or dp_shard < -1:
        raise ConfigError(f"{where}: parallel.dp_shard={dp_shard}: use -1 (fill) or a positive size")
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"{where}: optim.betas={betas}: give two numbers in [0, 1), e.g. [0.9, 0.95]")
    if any(w < 0 for w in cfg.data.weights) or (cfg.data.weights and sum(cfg.data.weights) <= 0):
        raise ConfigError(f"{where}: data.weights={cfg.data.weights}: weights must be >= 0 and not all 0")
