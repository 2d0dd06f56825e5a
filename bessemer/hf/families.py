"""The family adapters by name, and family detection from a config.json."""

from __future__ import annotations

from pathlib import Path

from bessemer.errors import ConversionError
from bessemer.hf.adapter import Adapter
from bessemer.hf.aquila import AquilaAdapter
from bessemer.hf.baichuan2 import Baichuan2Adapter
from bessemer.hf.llama import LlamaAdapter
from bessemer.hf.mistral import MistralAdapter

ADAPTERS: tuple[Adapter, ...] = (LlamaAdapter(), MistralAdapter(), Baichuan2Adapter(), AquilaAdapter())
# Bessemer family -> the adapter whose layout it exports to by default
_BY_FAMILY = {"llama": ADAPTERS[0], "llama2": ADAPTERS[0], "mistral": ADAPTERS[1]}
_BY_FAMILY |= {"baichuan2": ADAPTERS[2], "aquila": ADAPTERS[3]}
SUPPORTED_ARCHITECTURES = tuple(a for ad in ADAPTERS for a in ad.architectures)


def detect(hf: dict, where: Path) -> Adapter:
    """The adapter for a config.json: by its `architectures` entry, else by `model_type`."""
    archs = hf.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    for adapter in ADAPTERS:
        if any(a in adapter.architectures for a in archs):
            return adapter
    if not archs:
        for adapter in ADAPTERS:
            if hf.get("model_type") in adapter.model_types:
                return adapter
    named = ", ".join(map(str, archs)) or f"model_type {hf.get('model_type')!r}"
    raise ConversionError(
        f"{where}: architecture {named} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def for_family(family: str) -> Adapter:
    """The adapter a Bessemer family exports through."""
    if family not in _BY_FAMILY:
        raise ConversionError(
            f"model family {family!r} has no Hugging Face adapter; known: {', '.join(_BY_FAMILY)}"
        )
    return _BY_FAMILY[family]


def for_export(family: str, as_layout: str | None) -> Adapter:
    """The adapter to export a `family` model with, honouring `--as` (only "llama" is offered)."""
    if as_layout in (None, ""):
        return for_family(family)
    if as_layout != "llama":
        raise ConversionError(f"--as {as_layout!r} is not offered; use --as llama or leave it out")
    return ADAPTERS[0]
