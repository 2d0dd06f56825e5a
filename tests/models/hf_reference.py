"""Build `transformers` reference models from tiny configs and copy Bessemer weights into them."""

from __future__ import annotations

import torch

from bessemer.models import ModelConfig, Transformer


def hf_llama_config(cfg: ModelConfig, cls_name: str = "LlamaConfig"):
    import transformers

    kwargs = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="eager",
    )
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "linear":
        rope = {"rope_type": "linear", "factor": cfg.rope_factor, "rope_theta": cfg.rope_theta}
    elif cfg.rope_scaling == "dynamic":
        rope = {"rope_type": "dynamic", "factor": cfg.rope_factor, "rope_theta": cfg.rope_theta}
    elif cfg.rope_scaling == "llama3":
        rope = {
            "rope_type": "llama3",
            "factor": cfg.rope_factor,
            "rope_theta": cfg.rope_theta,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_seq_len,
        }
    kwargs["rope_parameters"] = rope
    if cls_name == "MistralConfig":
        kwargs["sliding_window"] = cfg.sliding_window or None
    return getattr(transformers, cls_name)(**kwargs)


def copy_into_hf(model: Transformer, hf_model) -> None:
    """Copy weights by the published LLaMA key layout (q/k/v/o_proj, gate/up/down_proj, norms)."""
    sd = {}
    for i, block in model.layers.items():
        p = f"model.layers.{i}."
        a, f = block.attention, block.feed_forward
        sd |= {
            p + "self_attn.q_proj.weight": a.wq.weight,
            p + "self_attn.k_proj.weight": a.wk.weight,
            p + "self_attn.v_proj.weight": a.wv.weight,
            p + "self_attn.o_proj.weight": a.wo.weight,
            p + "mlp.gate_proj.weight": f.w1.weight,
            p + "mlp.up_proj.weight": f.w3.weight,
            p + "mlp.down_proj.weight": f.w2.weight,
            p + "input_layernorm.weight": block.attention_norm.weight,
            p + "post_attention_layernorm.weight": block.ffn_norm.weight,
        }
    sd["model.embed_tokens.weight"] = model.tok_embeddings.weight
    sd["model.norm.weight"] = model.norm.weight
    head = model.output.weight
    sd["lm_head.weight"] = torch.nn.functional.normalize(head, dim=-1) if model.config.norm_head else head
    missing, unexpected = hf_model.load_state_dict(
        {k: v.detach().clone() for k, v in sd.items()}, strict=False
    )
    assert not unexpected, unexpected
    assert not [k for k in missing if "rotary" not in k], missing
