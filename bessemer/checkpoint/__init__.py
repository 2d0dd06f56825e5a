"""The one owner of the checkpoint layout (layout.py): written and opened by training, convert and inference."""

from bessemer.checkpoint.layout import (
    load_model_config,
    read_meta,
    resolve_checkpoint,
    save_model_config,
    step_dir_name,
    tokenizer_dir,
)

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


def __getattr__(name: str):
    """load_model and load_model_state import torch.distributed.checkpoint: only for the verbs that use them."""
    if name in ("load_model", "load_model_state"):
        from bessemer.checkpoint import model_io

        return getattr(model_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
