"""Named presets: the published shapes of each family, plus tiny ones for tests, demos and benchmarks."""

from __future__ import annotations

import difflib

from bessemer.errors import ConfigError
from bessemer.models.config import ModelConfig

_LLAMA_7B = dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, ffn_dim=11008)
_LLAMA_13B = dict(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, ffn_dim=13824)

PRESETS: dict[str, dict] = {
    "llama-7b": dict(family="llama", **_LLAMA_7B, norm_eps=1e-6, max_seq_len=2048),
    "llama-13b": dict(family="llama", **_LLAMA_13B, norm_eps=1e-6, max_seq_len=2048),
    "llama2-7b": dict(family="llama2", **_LLAMA_7B, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(family="llama2", **_LLAMA_13B, norm_eps=1e-5, max_seq_len=4096),
    # Mistral-7B v0.1: 4096-token sliding window over a 32K context; v0.2 (the 32K recipe): full attention, theta 1e6
    "mistral-7b": dict(
        family="mistral",
        vocab_size=32000,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        norm_eps=1e-5,
        max_seq_len=32768,
        sliding_window=4096,
    ),
    "mistral-7b-32k": dict(
        family="mistral",
        vocab_size=32000,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        norm_eps=1e-5,
        max_seq_len=32768,
        rope_theta=1e6,
    ),
    "baichuan2-7b": dict(
        family="baichuan2",
        vocab_size=125696,
        dim=4096,
        n_layers=32,
        n_heads=32,
        ffn_dim=11008,
        norm_eps=1e-6,
        max_seq_len=4096,
        norm_head=True,
    ),
    "baichuan2-13b": dict(
        family="baichuan2",
        vocab_size=125696,
        dim=5120,
        n_layers=40,
        n_heads=40,
        ffn_dim=13696,
        norm_eps=1e-6,
        max_seq_len=4096,
        norm_head=True,
        position="alibi",
    ),
    "aquila-7b": dict(
        family="aquila",
        vocab_size=100008,
        dim=4096,
        n_layers=32,
        n_heads=32,
        ffn_dim=11008,
        norm_eps=1e-6,
        max_seq_len=2048,
    ),
    # ~1.1B LLaMA-shaped model for single-GPU benchmarks
    "llama-1b": dict(
        family="llama2",
        vocab_size=32000,
        dim=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        ffn_dim=5632,
        norm_eps=1e-5,
        max_seq_len=4096,
    ),
    # tiny: the demo model (trains on 2 CPU cores in minutes) with the 32k LLaMA/Mistral vocabulary
    "tiny": dict(
        family="llama2",
        vocab_size=32000,
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        ffn_dim=688,
        norm_eps=1e-5,
        max_seq_len=1024,
    ),
    "tiny-mistral": dict(
        family="mistral",
        vocab_size=32000,
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=2,
        ffn_dim=688,
        norm_eps=1e-5,
        max_seq_len=1024,
        sliding_window=128,
    ),
    "tiny-baichuan2": dict(
        family="baichuan2",
        vocab_size=32000,
        dim=256,
        n_layers=4,
        n_heads=8,
        ffn_dim=688,
        norm_eps=1e-6,
        max_seq_len=1024,
        norm_head=True,
        position="alibi",
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset `name`, with field overrides applied."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"model.preset={name!r} is unknown; {hint}presets: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides}, f"model preset {name!r}")
