"""`convert --from-gguf` on tiny GGUF files written here: the q/k row order, the tokenizer, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bessemer.cli.main import main as bessemer
from bessemer.hf.gguf import convert_from_gguf

gguf = pytest.importorskip("gguf")

DIM, HEADS, KV_HEADS, FFN = 32, 4, 2, 64
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "\u010a"]
TYPES = [3, 3, 3, 1, 1, 1, 1, 1, 1]
MERGES = ["a b", "Ġ ab"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The row order llama.cpp's convert_hf_to_gguf.py writes for LLaMA q/k (written from its description)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    head_dim = DIM // HEADS

    def r(*shape):
        return g.standard_normal(shape).astype(np.float32)

    return {
        "token_embd.weight": r(len(TOKENS), DIM),
        "output_norm.weight": r(DIM),
        "blk.0.attn_norm.weight": r(DIM),
        "blk.0.attn_q.weight": r(HEADS * head_dim, DIM),
        "blk.0.attn_k.weight": r(KV_HEADS * head_dim, DIM),
        "blk.0.attn_v.weight": r(KV_HEADS * head_dim, DIM),
        "blk.0.attn_output.weight": r(DIM, HEADS * head_dim),
        "blk.0.ffn_norm.weight": r(DIM),
        "blk.0.ffn_gate.weight": r(FFN, DIM),
        "blk.0.ffn_up.weight": r(FFN, DIM),
        "blk.0.ffn_down.weight": r(DIM, FFN),
    }


def write_gguf(path, weights, arch: str = "llama", raw: dict | None = None) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    for name, t in weights.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            t = llama_cpp_permute(t, HEADS if "attn_q" in name else KV_HEADS)
        w.add_tensor(name, t)
    for name, (data, qtype) in (raw or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
    "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
    "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
    "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
    "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
    "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
    "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
    "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
    "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
}


def test_tiny_gguf_to_hf_restores_hf_rows_and_tokenizer(tmp_path):
    weights = hf_weights()
    write_gguf(tmp_path / "tiny.gguf", weights)
    ckpt = tmp_path / "ckpt"
    assert bessemer(["convert", "--from-gguf", str(tmp_path / "tiny.gguf"), "--out", str(ckpt)]) == 0
    hf = tmp_path / "hf"
    assert bessemer(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    got = {}
    for f in hf.glob("*.safetensors"):
        got.update(load_file(f))
    assert set(got) == set(HF_NAMES.values())
    for name, t in weights.items():
        assert torch.equal(got[HF_NAMES[name]], torch.from_numpy(t)), name
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["template"] == "tokenizer" and meta["gguf"]["tensor_types"] == {"F32": 11}
    config = json.loads((hf / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["rms_norm_eps"] == 1e-5

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    assert tok(" ab a<|im_end|>", add_special_tokens=False)["input_ids"] == [7, 6, 3, 2]
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=False) == (
        "<|im_start|>user\nab<|im_end|>\n"
    )


def test_quantised_tensors_dequantise_like_gguf(tmp_path):
    weights = hf_weights(1)
    q8 = gguf.quantize(weights.pop("blk.0.ffn_up.weight"), gguf.GGMLQuantizationType.Q8_0)
    write_gguf(
        tmp_path / "q.gguf", weights, raw={"blk.0.ffn_up.weight": (q8, gguf.GGMLQuantizationType.Q8_0)}
    )
    convert_from_gguf(tmp_path / "q.gguf", tmp_path / "ckpt")
    got = load_file(next((tmp_path / "ckpt" / "model").glob("*.safetensors")))[
        "layers.0.feed_forward.w3.weight"
    ]
    want = gguf.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
    assert got.shape == (FFN, DIM) and torch.equal(got, torch.from_numpy(want))


def _error(tmp_path, capsys, path) -> str:
    capsys.readouterr()  # drop what writing the test file printed
    assert bessemer(["convert", "--from-gguf", str(path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    return err


def test_truncated_file_is_one_line(tmp_path, capsys):
    write_gguf(tmp_path / "full.gguf", hf_weights())
    data = (tmp_path / "full.gguf").read_bytes()
    for n, name in ((len(data) - 1000, "cut.gguf"), (200, "head.gguf")):
        (tmp_path / name).write_bytes(data[:n])
        err = _error(tmp_path, capsys, tmp_path / name)
        assert name in err and "truncated" in err and "download the file again" in err


def test_not_a_gguf_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert "not a readable GGUF file" in _error(tmp_path, capsys, tmp_path / "x.gguf")
    assert "not found" in _error(tmp_path, capsys, tmp_path / "missing.gguf")


def test_unknown_architecture_is_one_line(tmp_path, capsys):
    write_gguf(tmp_path / "phi.gguf", hf_weights(), arch="phi2")
    err = _error(tmp_path, capsys, tmp_path / "phi.gguf")
    assert "phi.gguf" in err and "'phi2'" in err and "--from-hf" in err


def test_unsupported_quant_type_is_one_line(tmp_path, capsys):
    weights = hf_weights()
    weights.pop("blk.0.ffn_up.weight")
    q8_1 = np.zeros((FFN, DIM // 32 * 40), dtype=np.uint8)  # Q8_1: 40-byte blocks of 32 values
    write_gguf(
        tmp_path / "q81.gguf", weights, raw={"blk.0.ffn_up.weight": (q8_1, gguf.GGMLQuantizationType.Q8_1)}
    )
    err = _error(tmp_path, capsys, tmp_path / "q81.gguf")
    assert "q81.gguf" in err and "'blk.0.ffn_up.weight'" in err and "Q8_1" in err


def test_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    capsys.readouterr()
    assert bessemer(["convert", "--from-gguf", "x.gguf", "--out", str(tmp_path / "o"), "--as", "llama"]) != 0
    assert "--as does not apply to --from-gguf" in capsys.readouterr().err
