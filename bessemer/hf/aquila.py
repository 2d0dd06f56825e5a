"""Aquila (`AquilaForCausalLM`, model_type "aquila"): the LLaMA architecture and key layout with its own vocab.

Its published modeling code is LLaMA's from transformers 4.28-4.31, so config.json uses the older rope spelling
(`rope_theta` and `rope_scaling` {"type", "factor"}), which we read and write. `--as llama` exports a plain
LlamaForCausalLM folder instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bessemer.errors import ConversionError
from bessemer.hf.adapter import ImportOptions, make_config
from bessemer.hf.llama import (
    LlamaAdapter,
    check_plain_llama,
    llama_config_body,
    llama_shape_fields,
    rope_fields,
)
from bessemer.models import ModelConfig

AUTO_MAP = {
    "AutoConfig": "configuration_aquila.AquilaConfig",
    "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM",
}


class AquilaAdapter(LlamaAdapter):
    family = "aquila"
    architectures = ("AquilaForCausalLM",)
    model_types = ("aquila",)

    def config_from_hf(self, hf: dict, where: Path, opts: ImportOptions) -> ModelConfig:
        check_plain_llama(hf, where)
        return make_config(where, family="aquila", **llama_shape_fields(hf, where), **rope_fields(hf, where))

    def default_template(self, cfg: ModelConfig, hf: dict, opts: ImportOptions) -> str:
        return "aquila"

    def check_export(self, cfg: ModelConfig) -> None:
        super().check_export(cfg)
        if cfg.norm_head:
            raise ConversionError("the Aquila layout has no NormHead; export with --as llama (it folds it)")
        if cfg.rope_scaling not in ("none", "linear", "dynamic"):
            raise ConversionError(
                f"Aquila's modeling code knows no {cfg.rope_scaling!r} rope scaling; export with --as llama"
            )

    def config_to_hf(self, cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
        body = llama_config_body(cfg, dtype, token_ids)
        body["torch_dtype"] = body.pop("dtype")
        scaling = None
        if cfg.rope_scaling != "none":
            scaling = {"type": cfg.rope_scaling, "factor": cfg.rope_factor}
        return {
            "architectures": ["AquilaForCausalLM"],
            "auto_map": dict(AUTO_MAP),
            "model_type": "aquila",
            **body,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": scaling,
        }
