"""isinstance checks for DTensor and FSDP modules that do not import them: `torch.distributed.tensor` and
`torch.distributed.fsdp` pull in sympy and DTensor's op tables (seconds of start-up), and a one-process run that
lays nothing out has no use for them. No instance can exist before its class's module is imported, so until
then the answer is False."""

from __future__ import annotations

import sys

import torch
from torch import nn


def _loaded(module: str, name: str) -> type | None:
    return getattr(sys.modules.get(module), name, None)


def is_dtensor(t: torch.Tensor) -> bool:
    cls = _loaded("torch.distributed.tensor", "DTensor")
    return cls is not None and isinstance(t, cls)


def is_fsdp_module(m: nn.Module) -> bool:
    cls = _loaded("torch.distributed.fsdp", "FSDPModule")
    return cls is not None and isinstance(m, cls)
