"""Logits of converted checkpoints equal the source model's (fp32, max abs diff <= 1e-5) for every family."""

from __future__ import annotations

import pytest
import torch

from bessemer.checkpoint import load_model
from bessemer.hf import convert_from_hf
from tests.hf.helpers import (
    VOCAB,
    baichuan_alibi_reference,
    baichuan_as_llama_state,
    llama_reference,
    save_bin,
    save_transformers_model,
    write_aquila_folder,
    write_baichuan_folder,
)

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def tokens(seq: int = 40) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(1))


def converted_logits(hf_dir, out, x, **kw) -> torch.Tensor:
    convert_from_hf(hf_dir, out, **kw)
    model, _ = load_model(out)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_key_value_heads": 2},
        {"tie_word_embeddings": True},
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ],
    ids=["mha", "gqa", "tied", "llama3-rope"],
)
def test_llama_safetensors(tmp_path, kw):
    hf = save_transformers_model(tmp_path / "hf", **kw)
    x = tokens()
    with torch.no_grad():
        ref = hf(x).logits
    assert (converted_logits(tmp_path / "hf", tmp_path / "ck", x) - ref).abs().max() <= TOL


def test_llama_sharded_bin(tmp_path):
    # Baichuan2 and Aquila ship pytorch_model-*.bin shards with an index; LLaMA conversions did too
    hf = save_transformers_model(tmp_path / "src", num_key_value_heads=2)
    folder = tmp_path / "hf"
    save_bin(folder, {k: v for k, v in hf.state_dict().items()}, shards=3)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tmp_path / "src" / name).read_bytes())
    x = tokens()
    with torch.no_grad():
        ref = hf(x).logits
    assert (converted_logits(folder, tmp_path / "ck", x) - ref).abs().max() <= TOL


def test_mistral_sliding_window_smaller_than_sequence(tmp_path):
    hf = save_transformers_model(
        tmp_path / "hf", "MistralForCausalLM", num_key_value_heads=2, sliding_window=8, max_shard_size="100KB"
    )
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    x = tokens(40)
    with torch.no_grad():
        ref = hf(x).logits
    ours = converted_logits(tmp_path / "hf", tmp_path / "ck", x)
    assert (ours - ref).abs().max() <= TOL
    model, _ = load_model(tmp_path / "ck")
    assert model.config.sliding_window == 8 and model.config.n_kv_heads == 2


def test_aquila_matches_llama_with_same_weights(tmp_path):
    state = write_aquila_folder(tmp_path / "hf")
    x = tokens()
    with torch.no_grad():
        ref = llama_reference(state)(x).logits
    assert (converted_logits(tmp_path / "hf", tmp_path / "ck", x) - ref).abs().max() <= TOL


def test_baichuan2_7b_wpack_normhead_matches_llama_reference(tmp_path):
    state = write_baichuan_folder(tmp_path / "hf", alibi=False, shards=2)
    x = tokens()
    with torch.no_grad():
        ref = llama_reference(baichuan_as_llama_state(state))(x).logits
    ours = converted_logits(tmp_path / "hf", tmp_path / "ck", x)
    assert (ours - ref).abs().max() <= TOL
    model, _ = load_model(tmp_path / "ck")
    assert model.config.position == "rope" and model.config.norm_head


def test_baichuan2_13b_alibi_matches_written_reference(tmp_path):
    state = write_baichuan_folder(tmp_path / "hf", alibi=True)
    x = tokens(24)
    ours = converted_logits(tmp_path / "hf", tmp_path / "ck", x)
    assert (ours - baichuan_alibi_reference(state, x)).abs().max() <= TOL
    model, _ = load_model(tmp_path / "ck")
    assert model.config.position == "alibi" and model.config.norm_head


def test_wrong_wpack_order_or_rotary_layout_would_show(tmp_path):
    """The parity tests can see the mistakes they guard against: q/k swapped in W_pack, or q/k rows permuted
    into Meta's interleaved rotary layout, move the logits far beyond the tolerance."""
    state = write_baichuan_folder(tmp_path / "hf", alibi=False)
    x = tokens()
    good = baichuan_as_llama_state(state)
    swapped = dict(good)
    p = "model.layers.0.self_attn."
    swapped[p + "q_proj.weight"], swapped[p + "k_proj.weight"] = (
        good[p + "k_proj.weight"],
        good[p + "q_proj.weight"],
    )
    hd = 64 // 4
    perm = torch.arange(64).view(4, 2, hd // 2).transpose(1, 2).reshape(-1)  # rotate-half -> interleaved rows
    permuted = dict(good)
    permuted[p + "q_proj.weight"] = good[p + "q_proj.weight"][perm]
    permuted[p + "k_proj.weight"] = good[p + "k_proj.weight"][perm]
    ours = converted_logits(tmp_path / "hf", tmp_path / "ck", x)
    with torch.no_grad():
        for wrong in (swapped, permuted):
            assert (llama_reference(wrong)(x).logits - ours).abs().max() > 1e-3


def test_load_hf_model_in_memory_equals_converted_checkpoint(tmp_path):
    from bessemer.hf import load_hf_model

    write_baichuan_folder(tmp_path / "hf", alibi=False, shards=2)
    x = tokens()
    direct = load_hf_model(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(direct(x), converted_logits(tmp_path / "hf", tmp_path / "ck", x))
    assert load_hf_model(tmp_path / "hf", dtype=torch.bfloat16).output.weight.dtype == torch.bfloat16
