"""The numbers of a Hugging Face config.json, checked before any adapter reads them.

Adapters call `int(...)`/`float(...)` on these fields; without this check `hidden_size = 1e400` overflows,
`NaN` slips through as a size, and `1.5` heads silently becomes 1. Every size must be a whole, positive,
bounded number and every float finite, so a hostile or garbled config fails in one line before anything is built.
"""

from __future__ import annotations

import math
from pathlib import Path

from bessemer.errors import ConversionError
from bessemer.models.config import INT_RANGES

# config.json key: the ModelConfig field it becomes, whose upper bound it shares. The lower bound is 1: in a
# config.json a size of 0 means nothing, while ModelConfig reads 0 as "derive it" for some fields.
SIZES = {
    "hidden_size": "dim",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "num_hidden_layers": "n_layers",
    "intermediate_size": "ffn_dim",
    "vocab_size": "vocab_size",
    "head_dim": "head_dim",
    "max_position_embeddings": "max_seq_len",
    "sliding_window": "sliding_window",
    "original_max_position_embeddings": "rope_original_max_seq_len",
}
WHOLE = {key: (1, INT_RANGES[field][1]) for key, field in SIZES.items()}  # key: (smallest, largest)
# fields that must be true or false when present (a string "false" would read as true)
BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
# fields that must be finite and positive
POSITIVE = ("rms_norm_eps", "rope_theta", "factor", "low_freq_factor", "high_freq_factor")


def check_hf_numbers(hf: dict, where: Path) -> None:
    """Refuse, naming the key, a config.json whose sizes are not whole, positive and bounded numbers."""
    _check(hf, where, "")
    for key in BOOLS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            raise ConversionError(f"{where}: {key}={hf[key]!r} must be true or false; fix the config")
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
