"""Tiny Hugging Face folders for the conversion tests: transformers models, and hand-written Baichuan2 / Aquila
folders in their published config and key layouts (their modeling code is remote code we never run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

VOCAB = 257
DIM, LAYERS, HEADS, FFN = 64, 2, 4, 160


def write_tokenizer(folder: Path, vocab_size: int = VOCAB) -> None:
    """A word-level tokenizer whose ids cover the tiny vocabulary (<unk>=0, <s>=1, </s>=2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(str(folder))


def scale_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights of unit-scale activations (transformers' 0.02 init leaves attention nearly uniform, so a rotary
    or head-order mistake would hardly show in the logits); norms away from 1 so a swapped norm shows too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def tiny_hf_fields(**overrides) -> dict:
    """The tiny test model's shape in config.json's names, with `overrides` on top."""
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
    )
    return {**fields, **overrides}


def save_transformers_model(
    folder: Path,
    cls: str = "LlamaForCausalLM",
    dtype: torch.dtype = torch.float32,
    tokenizer: bool = True,
    max_shard_size: str | None = None,
    **overrides,
):
    """Build a tiny transformers model, save it with save_pretrained (safetensors) and return it (fp32, eval)."""
    import transformers

    config = getattr(transformers, cls.replace("ForCausalLM", "Config"))(**tiny_hf_fields(**overrides))
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    scale_weights(model)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(str(folder), **kwargs)
    if tokenizer:
        write_tokenizer(folder, config.vocab_size)
    return model.float().eval()


def save_bin(folder: Path, state: dict[str, torch.Tensor], shards: int = 1) -> None:
    """Write a state dict as pytorch_model.bin, or as `shards` pytorch_model-0000k-of-0000n.bin + index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    if shards == 1:
        torch.save({k: v.clone() for k, v in state.items()}, folder / "pytorch_model.bin")
        return
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for k in range(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = names[k * per : (k + 1) * per]
        torch.save({n: state[n].clone() for n in part}, folder / fname)
        weight_map |= dict.fromkeys(part, fname)
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def random_state(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = (torch.rand(shape, generator=g) + 0.5).to(dtype)
        else:
            out[name] = (torch.randn(shape, generator=g) / math.sqrt(shape[-1])).to(dtype)
    return out


def llama_key_shapes(n_layers: int = LAYERS, vocab: int = VOCAB, kv_heads: int = HEADS) -> dict:
    hd = DIM // HEADS
    shapes = {"model.embed_tokens.weight": (vocab, DIM)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (DIM,),
            p + "self_attn.q_proj.weight": (DIM, DIM),
            p + "self_attn.k_proj.weight": (kv_heads * hd, DIM),
            p + "self_attn.v_proj.weight": (kv_heads * hd, DIM),
            p + "self_attn.o_proj.weight": (DIM, DIM),
            p + "post_attention_layernorm.weight": (DIM,),
            p + "mlp.gate_proj.weight": (FFN, DIM),
            p + "mlp.up_proj.weight": (FFN, DIM),
            p + "mlp.down_proj.weight": (DIM, FFN),
        }
    return shapes | {"model.norm.weight": (DIM,), "lm_head.weight": (vocab, DIM)}


def write_aquila_folder(folder: Path, dtype: torch.dtype = torch.float32, shards: int = 1) -> dict:
    """An Aquila-7B-style folder (its published config.json fields, LLaMA keys, .bin); returns the weights."""
    config = {
        "architectures": ["AquilaForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_aquila.AquilaConfig",
            "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": DIM,
        "initializer_range": 0.006,
        "intermediate_size": FFN,
        "max_position_embeddings": 128,
        "model_type": "aquila",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.28.1",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    state = random_state(llama_key_shapes(), dtype)
    save_bin(folder, state, shards)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return state


def baichuan_key_shapes(vocab: int = VOCAB) -> dict:
    shapes = {"model.embed_tokens.weight": (vocab, DIM)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.W_pack.weight": (3 * DIM, DIM),
            p + "self_attn.o_proj.weight": (DIM, DIM),
            p + "mlp.gate_proj.weight": (FFN, DIM),
            p + "mlp.down_proj.weight": (DIM, FFN),
            p + "mlp.up_proj.weight": (FFN, DIM),
            p + "input_layernorm.weight": (DIM,),
            p + "post_attention_layernorm.weight": (DIM,),
        }
    return shapes | {"model.norm.weight": (DIM,), "lm_head.weight": (vocab, DIM)}


def write_baichuan_folder(
    folder: Path, alibi: bool, dtype: torch.dtype = torch.float32, shards: int = 1, inv_freq: bool = True
) -> dict:
    """A Baichuan2-7B (RoPE) or -13B (ALiBi) style folder: the published config.json fields (the 13B config has
    model_max_length and no max_position_embeddings), W_pack keys, .bin weights. Returns the weights."""
    config = {
        "_from_model_config": True,
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "tokenizer_class": "BaichuanTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "gradient_checkpointing": False,
        "hidden_act": "silu",
        "hidden_size": DIM,
        "initializer_range": 0.02,
        "intermediate_size": FFN,
        "model_max_length": 128,
        "model_type": "baichuan",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.29.2",
        "use_cache": True,
        "vocab_size": VOCAB,
        "z_loss_weight": 0,
    }
    if not alibi:
        config["max_position_embeddings"] = 128
    state = random_state(baichuan_key_shapes(), dtype)
    with torch.no_grad():
        state["lm_head.weight"] *= 3.0  # raw NormHead rows are not unit length
    if inv_freq and not alibi:
        # Baichuan2-7B's published .bin carries its rotary buffer; conversion must skip it
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (
            torch.arange(0, DIM // HEADS, 2).float() / (DIM // HEADS)
        )
    save_bin(folder, state, shards)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return state


def baichuan_as_llama_state(state: dict) -> dict:
    """Baichuan2-7B weights in LlamaForCausalLM keys: W_pack rows split q|k|v, NormHead rows normalised."""
    out = {}
    for name, t in state.items():
        if "rotary_emb" in name:
            continue
        if name.endswith("W_pack.weight"):
            q, k, v = t[:DIM], t[DIM : 2 * DIM], t[2 * DIM :]
            p = name.removesuffix("W_pack.weight")
            out |= {p + "q_proj.weight": q, p + "k_proj.weight": k, p + "v_proj.weight": v}
        elif name == "lm_head.weight":
            out[name] = torch.nn.functional.normalize(t.float(), dim=-1)
        else:
            out[name] = t
    return out


def llama_reference(state: dict, vocab: int = VOCAB, eps: float = 1e-6, **overrides):
    """LlamaForCausalLM (fp32) holding `state` (LLaMA keys), for logits comparisons."""
    import transformers

    config = transformers.LlamaConfig(**tiny_hf_fields(vocab_size=vocab, rms_norm_eps=eps, **overrides))
    model = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return model


def baichuan_alibi_reference(state: dict, tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Baichuan2-13B's published forward written out on its own keys (W_pack, NormHead, ALiBi, no RoPE): the
    ALiBi bias slope_h * (key - last position) is softmax-equivalent to slope_h * (key - query)."""
    n, d = HEADS, DIM // HEADS
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    slopes = torch.tensor([start * start**i for i in range(n)])
    seq = tokens.shape[1]
    alibi = slopes[:, None, None] * (torch.arange(seq) - (seq - 1))[None, None, :]
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    sd = {k: v.float() for k, v in state.items()}

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    h = sd["model.embed_tokens.weight"][tokens]
    bsz = tokens.shape[0]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        q, k, v = (x @ sd[p + "self_attn.W_pack.weight"].T).split(DIM, dim=-1)
        q, k, v = (t.view(bsz, seq, n, d).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + alibi + causal
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, seq, DIM)
        h = h + out @ sd[p + "self_attn.o_proj.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        gate, up = x @ sd[p + "mlp.gate_proj.weight"].T, x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    h = rms(h, sd["model.norm.weight"])
    return h @ torch.nn.functional.normalize(sd["lm_head.weight"], dim=-1).T


def read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a HF folder (safetensors or .bin), read with the libraries' own loaders."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    for f in sorted(folder.glob("pytorch_model*.bin")):
        out |= torch.load(f, weights_only=True)
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)
