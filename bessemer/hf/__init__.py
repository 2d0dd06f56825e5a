"""Hugging Face interop: lazy weight readers, one adapter per family, streaming conversion both ways, deltas."""

from bessemer.hf.adapter import Adapter, ImportOptions, Move
from bessemer.hf.convert import DTYPE_CHOICES, ConvertResult, convert_from_hf, convert_to_hf
from bessemer.hf.delta import apply_delta
from bessemer.hf.families import ADAPTERS, SUPPORTED_ARCHITECTURES, detect, for_export, for_family
from bessemer.hf.load import hf_default_template, load_hf_model
from bessemer.hf.weights import open_checkpoint_weights, open_hf_weights

__all__ = [
    "ADAPTERS",
    "DTYPE_CHOICES",
    "SUPPORTED_ARCHITECTURES",
    "Adapter",
    "ConvertResult",
    "ImportOptions",
    "Move",
    "apply_delta",
    "convert_from_hf",
    "convert_to_hf",
    "detect",
    "for_export",
    "for_family",
    "hf_default_template",
    "load_hf_model",
    "open_checkpoint_weights",
    "open_hf_weights",
]
