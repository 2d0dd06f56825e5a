"""Load a model for generate / chat / serve: a Bessemer checkpoint or a Hugging Face folder, with its tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bessemer.errors import CheckpointError, ConfigError
from bessemer.models import Transformer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPES |= {"float16": torch.float16, "fp16": torch.float16}


@dataclass
class InferenceModel:
    """A model ready to decode, with what decoding needs around it."""

    model: Transformer
    tokenizer: object
    template: str  # the prompt template name (bessemer.templates)
    family: str
    name: str  # shown as the model id by the server
    path: Path


def pick_device(device: str | None) -> torch.device:
    from bessemer import device as devices

    return devices.pick_device(device or "auto")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if not dtype:
        return torch.bfloat16 if device.type != "cpu" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_for_inference(
    path: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    template: str | None = None,
    quantize: str = "",
) -> InferenceModel:
    """Load a Bessemer checkpoint (or run dir) or a Hugging Face folder (config.json, no model.json).

    template: a name from bessemer.templates; default the checkpoint's meta.json "template", else the
    family's default.
    quantize: "int8" stores the weights as int8 per output channel (bessemer.infer.quantize).
    """
    from bessemer.checkpoint import read_meta, tokenizer_dir
    from bessemer.infer.quantize import check_quantize, quantize_int8
    from bessemer.templates import check_template, default_template
    from bessemer.tokenizer import load_tokenizer
    from bessemer.tune.peft_io import load_model_or_adapted

    path = Path(path)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    check_quantize(quantize)
    if _is_hf_folder(path):
        loaded = _load_hf(path, torch.device("cpu") if quantize else dev, dt, template)
        if quantize:  # quantized on the CPU, so the device never holds the full-precision weights
            loaded.model = quantize_int8(loaded.model).to(dev)
        return loaded
    if quantize:
        from bessemer.checkpoint import resolve_checkpoint
        from bessemer.infer.quantize import load_quantized
        from bessemer.tune.peft_io import load_adapted, lora_settings, merge_adapters

        ckpt = resolve_checkpoint(path)
        if lora_settings(ckpt) is None:
            model = load_quantized(ckpt, dev, dt)
        else:  # a LoRA run: fold the adapters in on the CPU, then quantize the merged weights
            model, ckpt = load_adapted(ckpt, device="cpu")
            model = quantize_int8(merge_adapters(model).to(dt)).to(dev)
    else:
        model, ckpt = load_model_or_adapted(path, device=dev, dtype=dt)  # a LoRA run: base + adapters
    meta = read_meta(ckpt)
    tok_dir = tokenizer_dir(ckpt)
    if tok_dir is None:
        raise CheckpointError(
            f"{ckpt}: no tokenizer/ folder; copy the model's tokenizer files into {ckpt}/tokenizer"
        )
    tokenizer = load_tokenizer(tok_dir, lean=True)
    family = meta.get("family") or model.config.family
    name = template or meta.get("template") or default_template(family, tokenizer)
    return InferenceModel(model, tokenizer, check_template(name), family, _model_name(ckpt), ckpt)


def _is_hf_folder(path: Path) -> bool:
    """An HF model folder has config.json and weights; a Bessemer checkpoint or run dir has model.json / checkpoints/."""
    if (path / "model.json").is_file() or (path / "checkpoints").is_dir():
        return False
    return (path / "config.json").is_file()


def _load_hf(path: Path, device: torch.device, dtype: torch.dtype, template: str | None) -> InferenceModel:
    from bessemer.hf import hf_default_template, load_hf_model
    from bessemer.templates import check_template, default_template
    from bessemer.tokenizer import load_tokenizer

    model = load_hf_model(path, device=device, dtype=dtype)
    tokenizer = load_tokenizer(path, lean=True)
    name = template or default_template(hf_default_template(path), tokenizer)
    return InferenceModel(model, tokenizer, check_template(name), model.config.family, path.name, path)


def _model_name(ckpt: Path) -> str:
    ckpt = ckpt.resolve()
    # a step dir names its run: runs/demo/checkpoints/step-000100 -> "demo"
    if ckpt.name.startswith("step-") and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent.name
    return ckpt.name
