"""GGUF files (llama.cpp's format) -> Bessemer checkpoints, with the tokenizer and chat template carried over.

The `gguf` package reads the file and dequantises each tensor to float32 (the same function transformers'
GGUF loader calls), one tensor at a time. llama.cpp stores LLaMA's q/k projections with each head's rows
interleaved for its own RoPE kernel; `unpermute_rows` undoes that, as transformers does, giving the Hugging
Face rotate-half layout. The result is first written as a float32 Hugging Face folder (config.json,
safetensors, tokenizer.json, tokenizer_config.json) beside the output, then converted by the same code as
`convert --from-hf`, so every check and transform of that path applies unchanged.

The tokenizer is rebuilt with the `tokenizers` library from the vocabulary, merges and token types the file
holds (llama.cpp's `gpt2` byte-level BPE); the special ids and the chat template come along in
tokenizer_config.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bessemer.checkpoint.files import atomic_write_text, temp_dir_for
from bessemer.checkpoint.outputs import remove_stale_temps
from bessemer.errors import ConversionError
from bessemer.hf.convert import (
    DEFAULT_SHARD_SIZE,
    ConvertResult,
    check_output,
    convert_from_hf,
    staged_output,
)
from bessemer.hf.safetensors_io import OutTensor, parse_size, tensor_bytes, write_sharded

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_TOKENIZERS = ("gpt2",)
# llama.cpp token types (llama_token_type): 3 control, 4 user-defined; both are never split by the BPE
_CONTROL, _USER_DEFINED = 3, 4
# pre-tokenizer names whose llama.cpp regex isolates every digit before the GPT-2 split (as the original
# tokenizer.json of these models does); other names get the plain GPT-2 byte-level split
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclass
class GGUFFile:
    """An opened GGUF file: its metadata fields and tensors (data stays memory-mapped until dequantised)."""

    path: Path
    reader: object  # gguf.GGUFReader

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def require(self, key: str):
        value = self.field(key)
        if value is None:
            raise ConversionError(
                f"{self.path}: metadata key {key!r} is missing; the GGUF file is incomplete"
            )
        return value


def open_gguf(path: str | Path) -> GGUFFile:
    """Open `path` with the gguf package, refusing a missing, foreign or truncated file in one line."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: GGUF file not found; pass the path of a .gguf file")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, KeyError, struct/numpy errors on damaged input
        raise ConversionError(
            f"{path}: not a readable GGUF file, or a truncated one ({_first_line(exc)}); download the file again"
        ) from exc
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ConversionError(
                f"{path}: tensor {t.name!r} ends past the end of the file ({size} bytes); the file is "
                "truncated; download the file again"
            )
    return GGUFFile(path, reader)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _f32_value(x: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


# -- config -----------------------------------------------------------------------------------------------


def hf_config(g: GGUFFile) -> dict:
    """The Hugging Face config.json of a LLaMA-architecture GGUF file."""
    arch = g.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{g.path}: GGUF architecture {arch!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}); convert the model's Hugging Face folder with --from-hf"
        )
    names = {t.name for t in g.reader.tensors}
    if "rope_freqs.weight" in names:
        raise ConversionError(
            f"{g.path}: rope_freqs.weight (LLaMA-3-style RoPE scaling) is not supported from GGUF; "
            "convert the model's Hugging Face folder with --from-hf"
        )
    n_heads = int(g.require(f"{arch}.attention.head_count"))
    dim = int(g.require(f"{arch}.embedding_length"))
    head_dim = int(g.field(f"{arch}.attention.key_length", dim // n_heads))
    rope_dims = int(g.field(f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ConversionError(
            f"{g.path}: {arch}.rope.dimension_count is {rope_dims} but heads have {head_dim} dims; partial "
            "rotary embeddings are not supported"
        )
    tokens = g.require("tokenizer.ggml.tokens")
    rope: dict = {
        "rope_type": "default",
        "rope_theta": _f32_value(g.field(f"{arch}.rope.freq_base", 10000.0)),
    }
    scaling = g.field(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        rope.update(rope_type="linear", factor=_f32_value(g.require(f"{arch}.rope.scaling.factor")))
    elif scaling != "none":
        raise ConversionError(
            f"{g.path}: RoPE scaling {scaling!r} is not supported from GGUF (none and linear are); convert "
            "the model's Hugging Face folder with --from-hf"
        )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(g.field(f"{arch}.vocab_size", len(tokens))),
        "hidden_size": dim,
        "intermediate_size": int(g.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(g.require(f"{arch}.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g.field(f"{arch}.attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(g.field(f"{arch}.context_length", 2048)),
        "rms_norm_eps": _f32_value(g.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_parameters": rope,
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False,
        "mlp_bias": False,
        "dtype": "float32",
    }
    for key, gguf_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if g.field(gguf_key) is not None:
            config[key] = int(g.field(gguf_key))
    return config


# -- tensors ----------------------------------------------------------------------------------------------


def hf_name(gguf_name: str, n_layers: int) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if it has none."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < n_layers:
        rest = _LAYER_NAMES.get(parts[2])
        if rest is not None:
            return f"model.layers.{parts[1]}.{rest}"
    return None


def unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order (the two rotary halves of each head interleaved) -> Hugging Face's."""
    rest = w.shape[1:]
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def dequantize(g: GGUFFile, tensor, config: dict) -> torch.Tensor:
    """One tensor as float32 in Hugging Face orientation and row order."""
    from gguf import dequantize as gguf_dequantize

    try:
        data = gguf_dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise ConversionError(
            f"{g.path}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, which the gguf package "
            "cannot dequantise; convert a GGUF quantised as F32, F16, BF16, Q4_0..Q8_0 or a K/IQ type"
        ) from exc
    w = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the file stays mapped read-only
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    w = w.reshape(shape)
    if tensor.name.endswith(".attn_q.weight"):
        w = unpermute_rows(w, config["num_attention_heads"])
    elif tensor.name.endswith(".attn_k.weight"):
        w = unpermute_rows(w, config["num_key_value_heads"])
    return w


def _check_tensor_types(g: GGUFFile, config: dict) -> None:
    """Dequantise one row of each tensor up front, so an unsupported type fails before anything is written."""
    from gguf import dequantize as gguf_dequantize

    for t in g.reader.tensors:
        if hf_name(t.name, config["num_hidden_layers"]) is None:
            raise ConversionError(
                f"{g.path}: unexpected tensor {t.name!r} for a {config['model_type']} model; the file holds a "
                "layer this converter does not know, convert the model's Hugging Face folder with --from-hf"
            )
        try:
            gguf_dequantize(t.data[:1], t.tensor_type)
        except NotImplementedError as exc:
            raise ConversionError(
                f"{g.path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which the gguf package cannot "
                "dequantise; use a GGUF quantised as F32, F16, BF16, Q4_0..Q8_0 or a K/IQ type"
            ) from exc


def _out_tensors(g: GGUFFile, config: dict) -> list[OutTensor]:
    n_layers = config["num_hidden_layers"]
    planned = []
    for t in g.reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))

        def write(f, t=t) -> None:
            f.write(tensor_bytes(dequantize(g, t, config)))

        planned.append(OutTensor(hf_name(t.name, n_layers), torch.float32, shape, write))
    return planned


# -- tokenizer --------------------------------------------------------------------------------------------


def tokenizer_files(g: GGUFFile) -> tuple[str, dict]:
    """tokenizer.json text and tokenizer_config.json contents rebuilt from the GGUF vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = g.require("tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZERS:
        raise ConversionError(
            f"{g.path}: GGUF tokenizer model {kind!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_TOKENIZERS)}); convert the model's Hugging Face folder with --from-hf"
        )
    tokens = list(g.require("tokenizer.ggml.tokens"))
    types = list(g.field("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in g.require("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConversionError(f"{g.path}: tokenizer.ggml.tokens repeats a token; the vocabulary is damaged")
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if g.field("tokenizer.ggml.pre", "default") in _DIGIT_SPLIT_PRE:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, k in enumerate(types) if k == _CONTROL]
    )
    tk.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, k in enumerate(types)
            if k == _USER_DEFINED
        ]
    )

    def token(key: str) -> str | None:
        i = g.field(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    add_bos = bool(g.field("tokenizer.ggml.add_bos_token", False))
    bos = token("bos")
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": bool(g.field("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for key, gguf_key in (
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ):
        if token(gguf_key) is not None:
            config[key] = token(gguf_key)
    arch = g.field("general.architecture")
    context = g.field(f"{arch}.context_length")
    if context is not None:
        config["model_max_length"] = int(context)
    template = g.field("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tk.to_str(pretty=True), config


# -- the verb ---------------------------------------------------------------------------------------------


def gguf_to_hf(path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a float32 Hugging Face folder (weights, config, tokenizer) holding the model of a GGUF file."""
    out = Path(out)
    check_output(out, overwrite, (Path(path),))
    return _write_hf(open_gguf(path), out, overwrite)


def _write_hf(g: GGUFFile, out: Path, overwrite: bool) -> Path:
    config = hf_config(g)
    _check_tensor_types(g, config)
    tok_json, tok_config = tokenizer_files(g)
    tensors = _out_tensors(g, config)
    with staged_output(out, overwrite, "convert --from-gguf") as tmp:
        write_sharded(tmp, tensors, parse_size("5GB"))
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        atomic_write_text(tmp / "generation_config.json", json.dumps(generation, indent=2) + "\n")
        atomic_write_text(tmp / "tokenizer.json", tok_json)
        atomic_write_text(
            tmp / "tokenizer_config.json", json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n"
        )
    return out


def convert_from_gguf(
    path: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    dtype: str = "keep",
    template: str | None = None,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
) -> ConvertResult:
    """Convert a GGUF file into a Bessemer checkpoint `out` (dequantised; `dtype` keep means float32).

    The template meta.json records is `template`, else the file's own chat template ("tokenizer") when it
    carries one, else the family default `convert --from-hf` picks.
    """
    start = time.perf_counter()
    path, out = Path(path), Path(out)
    check_output(out, overwrite, (path,))
    g = open_gguf(path)
    if template is None and g.field("tokenizer.chat_template"):
        template = "tokenizer"
    quant = Counter(t.tensor_type.name for t in g.reader.tensors)
    # the float HF folder lives beside `out` under its own name: staging `out` clears `out`'s leftover temps
    hf_stage = out.with_name(f"{out.name}-gguf-hf")
    remove_stale_temps(hf_stage)
    hf_tmp = temp_dir_for(hf_stage)
    inner_log = logging.getLogger("bessemer.hf.convert")
    level = inner_log.level
    try:
        _write_hf(g, hf_tmp, overwrite=True)
        inner_log.setLevel(logging.WARNING)  # its summary would name our temporary folders
        with staged_output(out, overwrite, "convert --from-gguf", (path,)) as tmp:
            result = convert_from_hf(
                hf_tmp, tmp, overwrite=True, dtype=dtype, template=template, shard_size=shard_size
            )
            meta = json.loads((tmp / "meta.json").read_text(encoding="utf-8"))
            meta["source"] = str(path.resolve())
            meta["gguf"] = {"file": path.name, "tensor_types": dict(sorted(quant.items()))}
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    finally:
        inner_log.setLevel(level)
        shutil.rmtree(hf_tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    log.info("%s -> %s: %s from %s tensors in %.1fs", path, out, result.family, dict(quant), seconds)
    return ConvertResult(out, result.family, result.n_tensors, result.nbytes, seconds)
