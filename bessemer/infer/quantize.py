"""Weight-only int8 with one scale per output channel: a quarter of fp32's weight memory, half of bf16's.

Applied from outside, like parallelism: `quantize_int8` swaps a model's linear layers (and its embedding table)
for int8 twins; the model code does not know. Activations stay in the model's dtype; each matmul runs
`torch._weight_int8pack_mm` (int8 weights, scaled per row) where the device has that kernel, else it
dequantizes one layer's weight at a time.

`load_quantized` builds a Bessemer checkpoint's model one block at a time (load, quantize, move), so the
full-precision weights are never all in memory at once.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bessemer.errors import ConfigError

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)


def check_quantize(name: str) -> str:
    if name and name not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize {name!r}: use one of {', '.join(QUANTIZE_CHOICES)} (or leave it out)")
    return name


def int8_per_row(
    weight: torch.Tensor, normalize_rows: bool = False, chunk_rows: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes [N, K] and float scales [N] with weight ~= codes * scales[:, None].

    Rows go in chunks, so the float temporaries stay small next to the weight (an embedding table or output
    head is the largest tensor of a model; four full-size temporaries of it would set the peak).
    normalize_rows: L2-normalise each row first (Baichuan2's NormHead uses its rows that way).
    """
    rows = weight.shape[0]
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=torch.float32, device=weight.device)
    for start in range(0, rows, chunk_rows):
        w = weight[start : start + chunk_rows].detach().float()
        if normalize_rows:
            w = F.normalize(w, dim=-1)
        s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        codes[start : start + chunk_rows] = torch.round(w / s[:, None]).clamp_(-127, 127)
        scale[start : start + chunk_rows] = s
    return codes, scale


class StoredRows:
    """A stored 2-D weight read a slice of rows at a time, for `int8_per_row`: quantizing an embedding table or
    output head (the largest tensors) then never holds the whole float table, only one chunk of it."""

    device = torch.device("cpu")

    def __init__(self, info):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype

    def __getitem__(self, rows: slice) -> torch.Tensor:
        import dataclasses

        from bessemer.hf.safetensors_io import read_tensor

        start, stop, _ = rows.indices(self.shape[0])
        row_bytes = self.info.nbytes // self.shape[0]
        part = dataclasses.replace(
            self.info, shape=(stop - start, *self.shape[1:]), offset=self.info.offset + start * row_bytes
        )
        return read_tensor(part)


class Int8Linear(nn.Module):
    """y = x @ (codes * scale)^T, codes int8 [out, in], scale [out] in the activations' dtype."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, normalize_rows: bool = False):
        super().__init__()
        codes, scale = int8_per_row(weight, normalize_rows)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", codes)
        self.register_buffer("scale", scale.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        scale = self.scale.to(x.dtype)
        if _has_int8_kernel(x):
            out = torch._weight_int8pack_mm(flat.contiguous(), self.weight, scale)
        else:
            out = F.linear(flat, self.weight.to(x.dtype)) * scale
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output channel"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one scale per row (a lookup dequantizes the rows it reads)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        codes, scale = int8_per_row(weight)
        self.register_buffer("weight", codes)
        self.register_buffer("scale", scale.to(dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.weight[tokens].to(self.scale.dtype) * self.scale[tokens, None]


def _has_int8_kernel(x: torch.Tensor) -> bool:
    # CPU has the kernel for float32/bfloat16/float16; CUDA for bfloat16/float16 (torch >= 2.4, sm80+)
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16)


def quantize_int8(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear (the output head included) and nn.Embedding inside `module` with int8 twins."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return _int8_twin(module)
    for name, child in list(module.named_children()):
        setattr(module, name, quantize_int8(child))
    return module


def _int8_twin(layer: nn.Module) -> nn.Module:
    weight = layer.weight
    if isinstance(layer, nn.Embedding):
        return Int8Embedding(weight, weight.dtype)
    if layer.bias is not None:
        raise ConfigError("int8: linear layers with a bias are not supported")
    # Baichuan2's NormHead normalises its rows before use: quantize the rows it uses
    return Int8Linear(weight, weight.dtype, normalize_rows=getattr(layer, "norm_head", False))


def load_quantized(ckpt: Path, device: torch.device, dtype: torch.dtype):
    """Build a checkpoint's model block by block on the CPU, load, quantize and move each to `device`."""
    from bessemer.checkpoint import load_model_config
    from bessemer.checkpoint.model_io import load_model_state
    from bessemer.models import build_model
    from bessemer.models.rope import rope_inv_freq

    cfg = load_model_config(ckpt)
    model = build_model(cfg, device="meta")
    tensor_files = _safetensors_index(ckpt)
    parts = ["tok_embeddings", *(f"layers.{i}" for i in model.layers), "norm", "output"]
    with tensor_files or contextlib.nullcontext():  # its files close once the model is built
        for name in parts:
            part = model.get_submodule(name)
            if tensor_files is not None and name in ("tok_embeddings", "output") and _streams(part):
                stored = (
                    "tok_embeddings.weight" if name == "output" and cfg.tie_embeddings else f"{name}.weight"
                )
                rows = StoredRows(_stored_info(ckpt, tensor_files, stored, part.weight.shape))
                if name == "tok_embeddings":
                    twin = Int8Embedding(rows, dtype)
                else:
                    twin = Int8Linear(rows, dtype, normalize_rows=getattr(part, "norm_head", False))
                setattr(model, name, twin.to(device))
                continue
            part.to_empty(device="cpu")
            state = {f"{name}.{k}": v for k, v in part.state_dict().items()}
            if name == "output" and cfg.tie_embeddings:  # a tied head is stored once, as the embedding table
                state = {"tok_embeddings.weight": part.weight}
            with torch.no_grad():
                if tensor_files is not None:
                    _fill_from_safetensors(ckpt, tensor_files, state)
                else:
                    load_model_state(ckpt, state)
            part.to(dtype)
            parent, _, attr = name.rpartition(".")
            holder = model.get_submodule(parent) if parent else model
            setattr(holder, attr, quantize_int8(part).to(device))
    model.inv_freq = rope_inv_freq(cfg, device=device)
    return model.eval()


def _streams(part: nn.Module) -> bool:
    """An embedding or bias-free linear layer: quantized straight from the file, a chunk of rows at a time."""
    return isinstance(part, nn.Embedding) or (isinstance(part, nn.Linear) and part.bias is None)


def _safetensors_index(ckpt: Path):
    """A tensor-by-tensor reader of a checkpoint stored as model/*.safetensors (None for DCP shards); it
    validates every header strictly and confines the files to the folder as it opens."""
    from bessemer.checkpoint.model_io import open_weights

    files = sorted((ckpt / "model").glob("*.safetensors"))
    if (ckpt / "state" / ".metadata").is_file() or not files:
        return None
    return open_weights(ckpt / "model")


def _stored_info(ckpt: Path, reader, name: str, want: torch.Size):
    """Where tensor `name` is stored, refusing a missing tensor or another shape in one line."""
    from bessemer.checkpoint.model_io import check_shape

    info = reader.infos().get(name)
    check_shape(ckpt, name, tuple(want), None if info is None else info.shape)
    return info


def _fill_from_safetensors(ckpt: Path, reader, state: dict[str, torch.Tensor]) -> None:
    """Read one block's tensors into its parameters with plain file reads: no mapping keeps the pages read so
    far resident, and a tensor of the stored dtype is read straight into its parameter."""
    for name, target in state.items():
        _stored_info(ckpt, reader, name, target.shape)
        reader.read_into(name, target)
