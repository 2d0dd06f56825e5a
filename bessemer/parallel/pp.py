"""Pipeline parallelism: cut the model into stages by layer, run micro-batches through a torch schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from bessemer.config import ParallelSection
from bessemer.parallel.dims import stage_layers

SCHEDULES = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B, "Interleaved1F1B": ScheduleInterleaved1F1B}


class StageParts(nn.Module):
    """The parts of the model one pipeline rank holds, under the full model's names (for the optimizer, grad
    clipping and checkpoints); the stage modules that run share these very submodules."""

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleDict({k: b for s in stages for k, b in s.layers.items()})
        for name in ("tok_embeddings", "norm", "output"):
            owner = [getattr(s, name) for s in stages if getattr(s, name) is not None]
            if owner:
                setattr(self, name, owner[0])


def apply_pp(
    model: nn.Module, pp_mesh: DeviceMesh, cfg: ParallelSection
) -> tuple[list[nn.Module], list[int]]:
    """This rank's stage modules and their stage ids: copies of `model` (best on meta) keeping only their layers.

    Stages are assigned in a loop: rank r holds stages r, r + pp, r + 2 pp, ... (what interleaved schedules
    expect). The first stage keeps the embedding, the last the final norm and head.
    """
    pp, rank = pp_mesh.size(), pp_mesh.get_local_rank()
    n_stages = pp * cfg.pp_stages_per_rank
    ranges = stage_layers(len(model.layers), n_stages, cfg.pp_layers)
    stage_ids = list(range(rank, n_stages, pp))
    stages = []
    for sid in stage_ids:
        stage = copy.deepcopy(model)
        keep = {str(i) for i in ranges[sid]}
        for name in [k for k in stage.layers if k not in keep]:
            del stage.layers[name]
        if sid > 0:
            stage.tok_embeddings = None
        if sid < n_stages - 1:
            stage.norm = None
            stage.output = None
        stages.append(stage)
    return stages, stage_ids


def build_pp_schedule(
    stages: list[nn.Module],
    stage_ids: list[int],
    pp_mesh: DeviceMesh,
    cfg: ParallelSection,
    device: torch.device,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
):
    """The torch.distributed.pipelining schedule over this rank's stages.

    `loss_fn(logits, labels)` must already be each micro-batch's share of the step's loss: gradients are not
    rescaled by the number of micro-batches (scale_grads=False).
    """
    n_stages = pp_mesh.size() * cfg.pp_stages_per_rank
    group = pp_mesh.get_group()
    pipeline = [PipelineStage(s, sid, n_stages, device, group=group) for s, sid in zip(stages, stage_ids)]
    schedule_cls = SCHEDULES[cfg.pp_schedule]
    if schedule_cls is ScheduleInterleaved1F1B:
        return schedule_cls(pipeline, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
    return schedule_cls(pipeline[0], n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
