"""LLaMA, LLaMA-2 and Vicuna (`LlamaForCausalLM`): pure renames; the rotary layout already matches ours.

Family rule: `llama2` when config.json has max_position_embeddings >= 4096 or rms_norm_eps == 1e-5 (LLaMA-2's
published values; LLaMA-1 conversions use 2048 and 1e-6), else `llama`. Vicuna is a LLaMA (or LLaMA-2) model;
only its chat template differs: `vicuna` when the folder name or config's _name_or_path says vicuna. Otherwise
the template is `llama2` for llama2 and `alpaca` for LLaMA-1 (a base model with no chat format of its own;
Alpaca is its classic instruction recipe).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bessemer.errors import ConversionError
from bessemer.hf.adapter import Adapter, ImportOptions, Move, dtype_name, hf_get, make_config, rename
from bessemer.models import ModelConfig

LLAMA_GLOBAL = (
    rename("model.embed_tokens.weight", "tok_embeddings.weight"),
    rename("model.norm.weight", "norm.weight"),
    rename("lm_head.weight", "output.weight"),
)
LLAMA_LAYER = (
    rename("model.layers.{i}.input_layernorm.weight", "layers.{i}.attention_norm.weight"),
    rename("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attention.wq.weight"),
    rename("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attention.wk.weight"),
    rename("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attention.wv.weight"),
    rename("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attention.wo.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weight"),
    rename("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.feed_forward.w1.weight"),
    rename("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.feed_forward.w3.weight"),
    rename("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.feed_forward.w2.weight"),
)

# HF rope_type -> our rope_scaling
_ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}


def rope_fields(hf: dict, where: Path) -> dict:
    """Rope settings from either spelling: transformers 5 `rope_parameters` or the older `rope_theta` +
    `rope_scaling` (whose type key is `type` in old files, `rope_type` in newer ones)."""
    params: dict = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConversionError(f"{where}: {key} is not an object; fix config.json")
        value = {("rope_type" if k == "type" else k): v for k, v in (value or {}).items()}
        # both spellings present: transformers reads rope_scaling, an editor may have changed either
        clash = next((k for k in value if k in params and params[k] != value[k]), None)
        if clash is not None:
            raise ConversionError(
                f"{where}: rope_scaling and rope_parameters disagree on {clash} ({params[clash]!r} vs "
                f"{value[clash]!r}); keep the one the model was trained with and remove the other"
            )
        params.update(value)
    theta = params.get("rope_theta", hf.get("rope_theta")) or 10000.0
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in _ROPE_TYPES:
        raise ConversionError(
            f"{where}: rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}"
        )
    fields = dict(rope_theta=float(theta), rope_scaling=_ROPE_TYPES[rope_type])
    if rope_type != "default":
        fields["rope_factor"] = float(hf_get(params, "factor", where))
        fields["rope_original_max_seq_len"] = int(params.get("original_max_position_embeddings") or 0)
    if rope_type == "llama3":
        fields["rope_low_freq_factor"] = float(params.get("low_freq_factor", 1.0))
        fields["rope_high_freq_factor"] = float(params.get("high_freq_factor", 4.0))
    return fields


def rope_parameters(cfg: ModelConfig) -> dict:
    """Our rope settings in transformers 5's `rope_parameters` spelling."""
    out: dict = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling}
    out["rope_theta"] = cfg.rope_theta
    if cfg.rope_scaling != "none":
        out["factor"] = cfg.rope_factor
        if cfg.rope_original_max_seq_len:
            out["original_max_position_embeddings"] = cfg.rope_original_max_seq_len
    if cfg.rope_scaling == "llama3":
        out["low_freq_factor"] = cfg.rope_low_freq_factor
        out["high_freq_factor"] = cfg.rope_high_freq_factor
    return out


def check_plain_llama(hf: dict, where: Path) -> None:
    """Refuse LLaMA-layout configs that switch on something our model does not have."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported; only silu is")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{where}: {key}=true is not supported (our projections have no bias)")


def llama_shape_fields(hf: dict, where: Path) -> dict:
    """The shape fields every LLaMA-layout config.json shares."""
    dim = int(hf_get(hf, "hidden_size", where))
    n_heads = int(hf_get(hf, "num_attention_heads", where))
    n_kv = int(hf.get("num_key_value_heads") or n_heads)
    head_dim = int(hf.get("head_dim") or 0)
    return dict(
        vocab_size=int(hf_get(hf, "vocab_size", where)),
        dim=dim,
        n_layers=int(hf_get(hf, "num_hidden_layers", where)),
        n_heads=n_heads,
        n_kv_heads=0 if n_kv == n_heads else n_kv,
        head_dim=0 if head_dim in (0, dim // n_heads) else head_dim,
        ffn_dim=int(hf_get(hf, "intermediate_size", where)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings") or 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def llama_config_body(cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
    """config.json fields shared by the LLaMA layouts, in the names transformers reads."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "use_cache": True,
        **{k: v for k, v in token_ids.items() if v is not None},
        "dtype": dtype_name(dtype),
    }


def is_vicuna(hf: dict, opts: ImportOptions) -> bool:
    return "vicuna" in opts.name_hint.lower() or "vicuna" in str(hf.get("_name_or_path", "")).lower()


class LlamaAdapter(Adapter):
    family = "llama"
    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)
    global_moves = LLAMA_GLOBAL
    layer_moves = LLAMA_LAYER

    def config_from_hf(self, hf: dict, where: Path, opts: ImportOptions) -> ModelConfig:
        check_plain_llama(hf, where)
        fields = llama_shape_fields(hf, where)
        llama2 = fields["max_seq_len"] >= 4096 or fields["norm_eps"] == 1e-5
        return make_config(where, family="llama2" if llama2 else "llama", **fields, **rope_fields(hf, where))

    def default_template(self, cfg: ModelConfig, hf: dict, opts: ImportOptions) -> str:
        if is_vicuna(hf, opts):
            return "vicuna"
        return "llama2" if cfg.family == "llama2" else "alpaca"

    def check_export(self, cfg: ModelConfig) -> None:
        if cfg.position != "rope":
            raise ConversionError(
                f"a {cfg.family} model with {cfg.position} positions cannot be a LlamaForCausalLM "
                "(it has RoPE only); export it in its own layout (drop --as llama)"
            )
        if cfg.sliding_window:
            raise ConversionError(
                f"a model with a {cfg.sliding_window}-token sliding window cannot be a LlamaForCausalLM; "
                "export it in its own layout (drop --as llama)"
            )
        if cfg.norm_head and cfg.tie_embeddings:
            raise ConversionError(
                "a NormHead tied to the embeddings cannot be folded into lm_head; untie it first"
            )

    def moves(self, cfg: ModelConfig, export: bool = False) -> list[Move]:
        out = super().moves(cfg, export)
        if export and cfg.norm_head:
            # LlamaForCausalLM has a plain head: store the rows NormHead would use at forward time
            out = [Move(m.hf, m.ours, "norm_rows") if m.ours == ("output.weight",) else m for m in out]
        return out

    def config_to_hf(self, cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **llama_config_body(cfg, dtype, token_ids),
            "rope_parameters": rope_parameters(cfg),
        }
