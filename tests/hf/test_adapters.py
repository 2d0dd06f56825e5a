"""Family detection, config mapping in both rope spellings, and the named transforms (W_pack, NormHead, GQA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bessemer.errors import ConversionError
from bessemer.hf import ImportOptions, detect, for_export
from bessemer.hf.adapter import Move, expected_shapes
from bessemer.models import ModelConfig

WHERE = Path("config.json")


def llama_cfg(**kw) -> dict:
    base = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
    }
    return {**base, **kw}


def to_ours(hf: dict, **opts) -> tuple[ModelConfig, str]:
    adapter = detect(hf, WHERE)
    o = ImportOptions(**opts)
    cfg = adapter.config_from_hf(hf, WHERE, o)
    return cfg, adapter.default_template(cfg, hf, o)


@pytest.mark.parametrize(
    "kw,family,template",
    [
        ({}, "llama", "alpaca"),
        ({"max_position_embeddings": 4096}, "llama2", "llama2"),
        ({"rms_norm_eps": 1e-5}, "llama2", "llama2"),
        ({"_name_or_path": "lmsys/vicuna-7b-v1.5", "max_position_embeddings": 4096}, "llama2", "vicuna"),
    ],
)
def test_llama_family_and_template_rule(kw, family, template):
    cfg, chosen = to_ours(llama_cfg(**kw))
    assert (cfg.family, chosen) == (family, template)


def test_vicuna_by_folder_name():
    assert to_ours(llama_cfg(), name_hint="vicuna-13b-v1.3")[1] == "vicuna"


def test_detect_by_model_type_when_no_architectures():
    assert detect({"model_type": "mistral"}, WHERE).family == "mistral"
    with pytest.raises(ConversionError, match="GPTNeoXForCausalLM.*supported: LlamaForCausalLM"):
        detect({"architectures": ["GPTNeoXForCausalLM"]}, WHERE)


@pytest.mark.parametrize(
    "kw",
    [
        {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}},  # transformers 5
        {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}},  # transformers < 4.45
        {"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},  # 4.45 - 4.57
    ],
    ids=["rope_parameters", "rope_scaling-type", "rope_scaling-rope_type"],
)
def test_rope_spellings(kw):
    cfg, _ = to_ours(llama_cfg(**kw))
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor) == (5e5, "linear", 4.0)


def test_rope_spellings_that_disagree_are_refused():
    # transformers 5 reads rope_scaling where both are present: taking rope_parameters would silently differ
    both = {"rope_parameters": {"rope_type": "default"}, "rope_scaling": {"type": "yarn", "factor": 4.0}}
    with pytest.raises(ConversionError, match="disagree on rope_type.*remove the other"):
        to_ours(llama_cfg(**both))
    same = {"rope_parameters": {"rope_type": "linear", "factor": 4.0}, "rope_scaling": {"type": "linear"}}
    assert to_ours(llama_cfg(**same))[0].rope_factor == 4.0


def test_llama3_rope_and_unknown_rope_type():
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 5e5,
    }
    cfg, _ = to_ours(llama_cfg(rope_parameters=rope, max_position_embeddings=131072))
    assert cfg.rope_scaling == "llama3" and cfg.rope_original_max_seq_len == 8192
    exported = for_export(cfg.family, None).config_to_hf(cfg, torch.bfloat16, {})
    assert exported["rope_parameters"] == {**rope, "rope_theta": 5e5}
    with pytest.raises(ConversionError, match="yarn"):
        to_ours(llama_cfg(rope_parameters={"rope_type": "yarn", "factor": 4.0}))


def test_unsupported_switches_refused():
    with pytest.raises(ConversionError, match="attention_bias"):
        to_ours(llama_cfg(attention_bias=True))
    with pytest.raises(ConversionError, match="hidden_act"):
        to_ours(llama_cfg(hidden_act="gelu"))


def test_mistral_gqa_and_window():
    hf = llama_cfg(architectures=["MistralForCausalLM"], num_key_value_heads=2, sliding_window=None)
    cfg, template = to_ours(hf)
    assert (cfg.family, cfg.n_kv_heads, cfg.sliding_window, template) == ("mistral", 2, 0, "mistral")
    del hf["sliding_window"]
    assert to_ours(hf)[0].sliding_window == 4096  # MistralConfig's default
    shapes = expected_shapes(cfg)
    assert shapes["layers.0.attention.wk.weight"] == (2 * 16, 64)  # GQA: kv heads x head dim rows
    assert shapes["layers.0.attention.wq.weight"] == (64, 64)


def baichuan_cfg(**kw) -> dict:
    base = {
        "architectures": ["BaichuanForCausalLM"],
        "model_type": "baichuan",
        "vocab_size": 125696,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "model_max_length": 4096,
    }
    return {**base, **kw}


def test_baichuan_position_rule():
    assert to_ours(baichuan_cfg(max_position_embeddings=4096))[0].position == "rope"  # 7B layout
    assert to_ours(baichuan_cfg())[0].position == "alibi"  # 13B layout: model_max_length only
    assert to_ours(baichuan_cfg(max_position_embeddings=4096, num_hidden_layers=40))[0].position == "alibi"
    assert to_ours(baichuan_cfg(), position="rope")[0].position == "rope"  # --position wins
    cfg, template = to_ours(baichuan_cfg())
    assert cfg.norm_head and template == "baichuan2"
    with pytest.raises(ConversionError, match="Baichuan 1"):
        to_ours(baichuan_cfg(vocab_size=64000))


def test_aquila_is_llama_keys_with_own_config():
    cfg, template = to_ours(llama_cfg(architectures=["AquilaForCausalLM"], model_type="aquila"))
    assert (cfg.family, template) == ("aquila", "aquila")
    exported = for_export("aquila", None).config_to_hf(cfg, torch.float16, {"bos_token_id": 1})
    assert exported["architectures"] == ["AquilaForCausalLM"] and exported["torch_dtype"] == "float16"
    assert "modeling_aquila.AquilaForCausalLM" in exported["auto_map"].values()
    assert for_export("aquila", "llama").config_to_hf(cfg, torch.float16, {})["architectures"] == [
        "LlamaForCausalLM"
    ]


def test_wpack_split_and_stack():
    cfg, _ = to_ours(baichuan_cfg(max_position_embeddings=4096))
    move = next(m for m in for_export("baichuan2", None).moves(cfg) if m.kind == "pack_rows")
    assert move.hf == ("model.layers.0.self_attn.W_pack.weight",)
    w_pack = torch.arange(3 * 64 * 64, dtype=torch.float32).view(3 * 64, 64)
    shapes = [(64, 64)] * 3
    q, k, v = move.to_ours([w_pack], shapes)
    assert torch.equal(q, w_pack[:64]) and torch.equal(k, w_pack[64:128]) and torch.equal(v, w_pack[128:])
    assert torch.equal(move.to_hf([q, k, v])[0], w_pack)
    assert move.hf_shapes(shapes) == [(192, 64)]


def test_normhead_folded_only_for_llama_layout():
    cfg, _ = to_ours(baichuan_cfg(max_position_embeddings=4096))
    own = {m.ours: m.kind for m in for_export("baichuan2", None).moves(cfg, export=True)}
    as_llama = {m.ours: m.kind for m in for_export("baichuan2", "llama").moves(cfg, export=True)}
    assert own[("output.weight",)] == "rename" and as_llama[("output.weight",)] == "norm_rows"
    head = torch.randn(10, 8, dtype=torch.bfloat16) * 5
    (folded,) = Move(("lm_head.weight",), ("output.weight",), "norm_rows").to_hf([head])
    assert folded.dtype == torch.bfloat16
    assert torch.allclose(folded.float().norm(dim=-1), torch.ones(10), atol=1e-2)


def test_llama_keys_are_pure_renames():
    cfg, _ = to_ours(llama_cfg(num_key_value_heads=2))
    moves = for_export("llama", None).moves(cfg)
    assert {m.kind for m in moves} == {"rename"}
    table = {m.hf[0]: m.ours[0] for m in moves}
    assert table["model.layers.1.mlp.gate_proj.weight"] == "layers.1.feed_forward.w1.weight"
    assert table["model.layers.1.mlp.up_proj.weight"] == "layers.1.feed_forward.w3.weight"
    assert table["model.layers.1.mlp.down_proj.weight"] == "layers.1.feed_forward.w2.weight"
    assert table["lm_head.weight"] == "output.weight"
    assert set(table.values()) == set(expected_shapes(cfg))  # every tensor, nothing else
