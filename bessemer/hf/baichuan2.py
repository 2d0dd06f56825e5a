"""Baichuan2 (`BaichuanForCausalLM`, model_type "baichuan"): LLaMA with q, k, v packed in one W_pack matrix
[3*dim, dim] (rows: q, then k, then v), a NormHead (lm_head rows L2-normalised at forward time; the stored
lm_head.weight is raw), and ALiBi instead of RoPE in the 13B model.

Position rule (config.json carries no position field): the published 13B config names only
`model_max_length` and 40 layers, and its modeling code uses ALiBi; the 7B config also names
`max_position_embeddings`, which its rotary cache reads. So: ALiBi when num_hidden_layers == 40 or config.json has
no max_position_embeddings, RoPE otherwise; `--position rope|alibi` overrides. Baichuan 1 (vocab 64,000, plain
head) is not Baichuan2 and is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bessemer.errors import ConversionError
from bessemer.hf.adapter import Adapter, ImportOptions, Move, dtype_name, hf_get, make_config, rename
from bessemer.hf.llama import check_plain_llama
from bessemer.models import ModelConfig

BAICHUAN1_VOCAB = 64000

BAICHUAN_GLOBAL = (
    rename("model.embed_tokens.weight", "tok_embeddings.weight"),
    rename("model.norm.weight", "norm.weight"),
    rename("lm_head.weight", "output.weight"),  # raw rows: our OutputHead normalises them (norm_head)
)
BAICHUAN_LAYER = (
    rename("model.layers.{i}.input_layernorm.weight", "layers.{i}.attention_norm.weight"),
    Move(
        ("model.layers.{i}.self_attn.W_pack.weight",),
        (
            "layers.{i}.attention.wq.weight",
            "layers.{i}.attention.wk.weight",
            "layers.{i}.attention.wv.weight",
        ),
        "pack_rows",
    ),
    rename("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attention.wo.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weight"),
    rename("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.feed_forward.w1.weight"),
    rename("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.feed_forward.w3.weight"),
    rename("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.feed_forward.w2.weight"),
)
AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaichuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
}


def baichuan_position(hf: dict, opts: ImportOptions) -> str:
    if opts.position:
        return opts.position
    if int(hf.get("num_hidden_layers", 0)) == 40 or "max_position_embeddings" not in hf:
        return "alibi"
    return "rope"


class Baichuan2Adapter(Adapter):
    family = "baichuan2"
    architectures = ("BaichuanForCausalLM",)
    model_types = ("baichuan",)
    global_moves = BAICHUAN_GLOBAL
    layer_moves = BAICHUAN_LAYER

    def config_from_hf(self, hf: dict, where: Path, opts: ImportOptions) -> ModelConfig:
        check_plain_llama(hf, where)
        vocab = int(hf_get(hf, "vocab_size", where))
        if vocab == BAICHUAN1_VOCAB:
            raise ConversionError(
                f"{where}: vocab_size 64000 is Baichuan 1 (plain lm_head), not Baichuan2; only Baichuan2 converts"
            )
        position = baichuan_position(hf, opts)
        max_len = hf.get("max_position_embeddings") or hf.get("model_max_length") or 4096
        return make_config(
            where,
            family="baichuan2",
            vocab_size=vocab,
            dim=int(hf_get(hf, "hidden_size", where)),
            n_layers=int(hf_get(hf, "num_hidden_layers", where)),
            n_heads=int(hf_get(hf, "num_attention_heads", where)),
            ffn_dim=int(hf_get(hf, "intermediate_size", where)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(max_len),
            position=position,
            norm_head=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def default_template(self, cfg: ModelConfig, hf: dict, opts: ImportOptions) -> str:
        return "baichuan2"

    def check_export(self, cfg: ModelConfig) -> None:
        # Baichuan2's modeling code hard-codes these; a model that differs would load silently wrong
        problems = []
        if not cfg.norm_head:
            problems.append("no NormHead")
        if cfg.n_kv_heads not in (0, cfg.n_heads):
            problems.append("grouped-query attention")
        if cfg.head_dim not in (0, cfg.dim // cfg.n_heads):
            problems.append("a custom head_dim")
        if cfg.sliding_window:
            problems.append("a sliding window")
        if cfg.tie_embeddings:
            problems.append("tied embeddings")
        if cfg.position == "rope" and (cfg.rope_theta != 10000.0 or cfg.rope_scaling != "none"):
            problems.append("non-default RoPE")
        if problems:
            raise ConversionError(
                f"the Baichuan2 layout cannot express {', '.join(problems)}; export with --as llama instead"
            )

    def config_to_hf(self, cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
        out = {
            "architectures": ["BaichuanForCausalLM"],
            "auto_map": dict(AUTO_MAP),
            "model_type": "baichuan",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.dim,
            "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "hidden_act": "silu",
            "model_max_length": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": False,
            "use_cache": True,
            "z_loss_weight": 0,
            **{k: v for k, v in token_ids.items() if v is not None},
            "torch_dtype": dtype_name(dtype),
        }
        if cfg.position == "rope":
            out["max_position_embeddings"] = cfg.max_seq_len  # the 7B layout; its absence means ALiBi
        return out
