"""The numbers of a Hugging Face config.json, checked before any adapter reads them.

Adapters call `int(...)`/`float(...)` on these fields; without this check `hidden_size = 1e400` overflows,
`NaN` slips through as a size, and `1.5` heads silently becomes 1. Every size must be a whole, positive,
bounded number and every float finite, so a hostile or garbled config fails in one line before anything is built.
"""

from __future__ import annotations

import math
from pathlib import Path

from bessemer.errors import ConversionError

# field: (smallest, largest) for whole numbers; bounds match ModelConfig's
WHOLE = {
    "hidden_size": (1, 1 << 16),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "num_hidden_layers": (1, 1024),
    "intermediate_size": (1, 1 << 20),
    "vocab_size": (1, 1 << 24),
    "head_dim": (1, 1 << 13),
    "max_position_embeddings": (1, 1 << 24),
    "sliding_window": (1, 1 << 24),
    "original_max_position_embeddings": (1, 1 << 24),
}
# fields that must be finite and positive
POSITIVE = ("rms_norm_eps", "rope_theta", "factor", "low_freq_factor", "high_freq_factor")


def check_hf_numbers(hf: dict, where: Path) -> None:
    """Refuse, naming the key, a config.json whose sizes are not whole, positive and bounded numbers."""
    _check(hf, where, "")
    scaling = hf.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConversionError(f"{where}: rope_scaling must be an object or null; fix or remove it")
    if scaling:
        _check(scaling, where, "rope_scaling.")


def _check(fields: dict, where: Path, prefix: str) -> None:
    for key, (low, high) in WHOLE.items():
        value = fields.get(key)
        if value is None:
            continue
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # some exporters write 4096.0
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConversionError(f"{where}: {prefix}{key}={value!r} must be a whole number; fix the config")
        if not low <= value <= high:
            raise ConversionError(
                f"{where}: {prefix}{key}={value} is out of range ({low} to {high:,}); fix the config"
            )
    for key in POSITIVE:
        value = fields.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConversionError(
                f"{where}: {prefix}{key}={value!r} must be a finite positive number; fix the config"
            )
