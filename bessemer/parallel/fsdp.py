"""FSDP2: shard parameters, gradients and optimizer state per block over the data-parallel mesh."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    dp_mesh: DeviceMesh,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool,
    cpu_offload: bool,
) -> None:
    """`fully_shard` each block, the embedding, the final norm with the head, then the root.

    The embedding and the head get their own units so that at most one of the two (the largest matrices of a
    model with a big vocabulary) is gathered at a time, not both for the whole step.

    `dp_mesh` is 1-D (dp_shard x cp: FSDP) or 2-D (dp_replicate, dp_shard x cp: HSDP, replicas all-reduce; with
    a shard dim of size 1 that is plain replicated data parallelism). Gradients are SUMMED over the mesh, not
    averaged: the loss is already divided by the global number of target tokens.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    extra = {"offload_policy": CPUOffloadPolicy()} if cpu_offload else {}
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        reshard = reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard, **extra)
    if getattr(model, "tok_embeddings", None) is not None:
        fully_shard(
            model.tok_embeddings,
            mesh=dp_mesh,
            mp_policy=mp,
            reshard_after_forward=reshard_after_forward,
            **extra,
        )
    head = [m for m in (getattr(model, "norm", None), getattr(model, "output", None)) if m is not None]
    if head:
        # backward starts with the head: keep it gathered after forward
        fully_shard(head, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False, **extra)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward, **extra)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # a plain SUM on the wire (no AVG, no PreMulSum: gloo has neither) and no division afterwards
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
