"""Mistral (`MistralForCausalLM`): LLaMA's key layout with grouped-query attention and a sliding window.

config.json's `sliding_window` (null: full attention) becomes ModelConfig.sliding_window (0: full attention); a
missing key means transformers' default for Mistral, 4096 (v0.1's window).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from bessemer.hf.adapter import ImportOptions, make_config
from bessemer.hf.llama import (
    LlamaAdapter,
    check_plain_llama,
    llama_config_body,
    llama_shape_fields,
    rope_fields,
    rope_parameters,
)
from bessemer.models import ModelConfig

DEFAULT_SLIDING_WINDOW = 4096  # MistralConfig's default when config.json has no sliding_window key


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    architectures = ("MistralForCausalLM",)
    model_types = ("mistral",)

    def config_from_hf(self, hf: dict, where: Path, opts: ImportOptions) -> ModelConfig:
        check_plain_llama(hf, where)
        fields = llama_shape_fields(hf, where)
        window = hf.get("sliding_window", DEFAULT_SLIDING_WINDOW)
        if hf.get("max_position_embeddings") is None:
            fields["max_seq_len"] = 4096 * 32  # MistralConfig's default context
        return make_config(
            where, family="mistral", **fields, **rope_fields(hf, where), sliding_window=int(window or 0)
        )

    def default_template(self, cfg: ModelConfig, hf: dict, opts: ImportOptions) -> str:
        return "mistral"

    def check_export(self, cfg: ModelConfig) -> None:
        super().check_export(replace(cfg, sliding_window=0))  # LLaMA's limits, less the window Mistral has

    def config_to_hf(self, cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
        return {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            **llama_config_body(cfg, dtype, token_ids),
            "rope_parameters": rope_parameters(cfg),
            "sliding_window": cfg.sliding_window or None,
        }
