"""The one place a job's layout is applied: PP split, then per stage TP/SP -> activation checkpointing ->
compile -> FSDP2. Reading `parallelize` tells how a run is laid out; each step is a short function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from bessemer.config import ParallelSection
from bessemer.errors import ConfigError
from bessemer.models.transformer import to_empty
from bessemer.parallel.ac import apply_activation_checkpointing
from bessemer.parallel.compile import apply_compile
from bessemer.parallel.dims import ParallelDims
from bessemer.parallel.instances import is_dtensor
from bessemer.parallel.mesh import ParallelMesh

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# wrappers that insert a level into parameter names; checkpoints and the reference model use the plain names
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass
class ParallelModel:
    model: nn.Module  # every parameter this rank holds, under the full model's names
    stages: list[nn.Module]  # the modules that run forward: [model] without pipeline parallelism
    stage_ids: list[int] = field(default_factory=lambda: [0])
    schedule: object | None = None  # the pipeline schedule when pp > 1


def resolve_dtype(name: str, key: str, auto: torch.dtype) -> torch.dtype:
    if name == "auto":
        return auto
    if name not in DTYPES:
        raise ConfigError(f"{key}={name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def parallelize(
    model: nn.Module,
    dims: ParallelDims,
    mesh: ParallelMesh | None,
    cfg: ParallelSection,
    device: torch.device,
    compute_dtype: torch.dtype,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    n_microbatches: int = 1,
) -> ParallelModel:
    """Lay `model` (best built on meta: nothing is allocated here) out over `mesh`, in the fixed order.

    compute_dtype: the dtype FSDP casts parameters to for compute when parallel.param_dtype is "auto".
    loss_fn, n_microbatches: the pipeline schedule's per-micro-batch loss and micro-batch count (pp > 1).
    """
    param_dtype = resolve_dtype(cfg.param_dtype, "parallel.param_dtype", compute_dtype)
    reduce_dtype = resolve_dtype(cfg.reduce_dtype, "parallel.reduce_dtype", torch.float32)
    if dims.pp > 1:
        from bessemer.parallel.pp import apply_pp  # torch's pipelining imports dynamo: only when used

        stages, stage_ids = apply_pp(model, mesh["pp"], cfg)
    else:
        stages, stage_ids = [model], [0]
    for stage in stages:
        if dims.tp > 1:
            from bessemer.parallel.tp import apply_tp  # DTensor/FSDP/TP: seconds to import, so only when used

            apply_tp(stage, mesh["tp"], cfg.sequence_parallel, cfg.loss_parallel)
        apply_activation_checkpointing(stage, cfg.activation_checkpoint)
        if cfg.compile:
            apply_compile(stage)
        if dims.fsdp:
            from bessemer.parallel.fsdp import apply_fsdp

            apply_fsdp(
                stage, mesh.fsdp(dims), param_dtype, reduce_dtype, cfg.reshard_after_forward, cfg.cpu_offload
            )
    if dims.pp == 1:
        return ParallelModel(model, stages)
    from bessemer.parallel.pp import StageParts, build_pp_schedule

    schedule = build_pp_schedule(stages, stage_ids, mesh["pp"], cfg, device, n_microbatches, loss_fn)
    return ParallelModel(StageParts(stages), stages, stage_ids, schedule)


def plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def materialize(
    stages: list[nn.Module],
    device: torch.device,
    init: Callable[[str, torch.Tensor], None] | None,
    only: Callable[[str], bool] | None = None,
) -> None:
    """Allocate this rank's share of every stage (laid out on the meta device) on `device`, and fill it.

    init(name, full): fills `full`, the whole parameter `name` (plain name), with its initial values. Each rank
    draws one whole parameter at a time and keeps its own slice: no communication, at most one full parameter
    in memory, and the numbers of the one-process run whatever the layout. None: leave the parameters
    uninitialised (a checkpoint is about to overwrite them); buffers are computed either way.
    only(name): when given, just the parameters it accepts are drawn (a LoRA fine-tune's new adapters).
    """
    for stage in stages:
        to_empty(stage, device)
        stage.init_buffers(device)
        if init is None:
            continue
        for name, param in stage.named_parameters():
            if only is not None and not only(plain_name(name)):
                continue
            if not is_dtensor(param):
                init(plain_name(name), param)
                continue
            from torch.distributed.tensor import distribute_tensor

            full = torch.empty(param.shape, dtype=param.dtype, device=device)
            init(plain_name(name), full)
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(local.to_local())
            del full, local
