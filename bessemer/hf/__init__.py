"""Hugging Face interop: lazy weight readers, one adapter per family, streaming conversion both ways, deltas.

The names below load their module on first use: inference and fine-tuning read checkpoints through
bessemer.hf.weights alone and need not import the converters (issue 12: each verb at work within 1 s).
"""

from __future__ import annotations

from importlib import import_module

_WHERE = {
    "Adapter": "adapter",
    "ImportOptions": "adapter",
    "Move": "adapter",
    "DTYPE_CHOICES": "convert",
    "ConvertResult": "convert",
    "convert_from_hf": "convert",
    "convert_to_hf": "convert",
    "apply_delta": "delta",
    "ADAPTERS": "families",
    "SUPPORTED_ARCHITECTURES": "families",
    "detect": "families",
    "for_export": "families",
    "for_family": "families",
    "hf_default_template": "load",
    "load_hf_model": "load",
    "open_checkpoint_weights": "weights",
    "open_hf_weights": "weights",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
