"""The one owner of the checkpoint layout (layout.py): written and opened by training, convert and inference."""

from bessemer.checkpoint.layout import (
    load_model_config,
    read_meta,
    resolve_checkpoint,
    save_model_config,
    step_dir_name,
    tokenizer_dir,
)
from bessemer.checkpoint.model_io import load_model, load_model_state

__all__ = [
    "load_model",
    "load_model_config",
    "load_model_state",
    "read_meta",
    "resolve_checkpoint",
    "save_model_config",
    "step_dir_name",
    "tokenizer_dir",
]
