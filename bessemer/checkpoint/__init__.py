"""One checkpoint format for every parallel layout (see layout.py)."""

from bessemer.checkpoint.layout import read_meta, resolve_checkpoint, step_dir_name, tokenizer_dir
from bessemer.checkpoint.model_io import load_model, load_model_state

__all__ = [
    "load_model",
    "load_model_state",
    "read_meta",
    "resolve_checkpoint",
    "step_dir_name",
    "tokenizer_dir",
]
