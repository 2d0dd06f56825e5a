"""The LLaMA decoder family as plain nn.Modules; parallelism is applied from outside (bessemer.parallel)."""

from bessemer.models.config import ModelConfig
from bessemer.models.registry import PRESETS, get_preset
from bessemer.models.transformer import Transformer, build_model

__all__ = ["PRESETS", "ModelConfig", "Transformer", "build_model", "get_preset"]
