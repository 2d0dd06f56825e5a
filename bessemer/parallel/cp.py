"""Context parallelism: split long sequences over the "cp" mesh; SDPA becomes ring attention (CUDA kernels)."""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.device_mesh import DeviceMesh


def apply_cp(cp_mesh: DeviceMesh, batch: dict[str, torch.Tensor]) -> contextlib.AbstractContextManager:
    """A context inside which `batch`'s tensors hold this rank's share of the sequence (load-balanced chunks,
    sharded in place) and causal SDPA exchanges keys/values around the ring. Forward and backward both run inside.

    Targets must be counted before entering: each rank then sees only its chunk of the labels.
    """
    from torch.distributed.tensor.experimental import context_parallel  # seconds to import: cp > 1 only

    buffers = [batch[k] for k in ("tokens", "labels", "positions") if k in batch]
    return context_parallel(
        cp_mesh, buffers=buffers, buffer_seq_dims=[1] * len(buffers), no_restore_buffers=set(buffers)
    )
