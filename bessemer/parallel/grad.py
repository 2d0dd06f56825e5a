"""Gradient norm and clipping over every parameter of the model, whatever shards or stages hold them."""

from __future__ import annotations

import torch
import torch.distributed as dist

from bessemer.parallel.instances import is_dtensor


def _unreduced(key: tuple) -> bool:
    """Whether a (mesh, placements) group key holds Partial (not yet summed) DTensor gradients."""
    return len(key) == 2 and any(p.is_partial() for p in key[1])


@torch.no_grad()
def clip_grad_norm(
    params: list[torch.nn.Parameter], max_norm: float, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Clip gradients to a global L2 norm of `max_norm` (inf: measure only); return the norm before clipping.

    Sharded (DTensor) gradients are reduced over their mesh; with pipeline stages the squares are summed over
    `pp_group` so every rank clips by the same, whole-model norm. Same arithmetic as torch's clip_grad_norm_.
    """
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:  # get_total_norm needs tensors of one kind: group by mesh and layout
        if p.grad is not None:
            g = p.grad
            key = (g.device_mesh, g.placements) if is_dtensor(g) else (g.device,)
            groups.setdefault(key, []).append(p)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
        norms.append(norm.full_tensor() if is_dtensor(norm) else norm)
    device = norms[0].device if norms else torch.device("cpu")
    if len(norms) == 1:
        total = norms[0]
    else:
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)
    if pp_group is not None:
        total = total**2
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=pp_group)
        total = total.sqrt()
    for key, group in groups.items():
        # Partial gradients (LoRA adapters under tp) are scaled one by one: torch 2.11's DTensor runs an in-place
        # foreach op on them on a reduced copy and drops the result, leaving them unclipped; mul_ is right on all
        torch.nn.utils.clip_grads_with_norm_(
            group, max_norm, total, foreach=False if _unreduced(key) else None
        )
    return total
