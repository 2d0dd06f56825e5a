"""The trainer's small collectives: sums, maxima and agreements over a mesh's process groups.

Values that feed the step (target counts, the finite flag) stay tensors on the collective device, so reducing
them adds no host sync; only the log-step figures (`sum_to_host`, `max_to_host`) and `agree` read a result back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from bessemer import device as devices


def groups_of(mesh: DeviceMesh | None, *names: str) -> list:
    """The process groups of the named mesh dimensions that span more than one rank."""
    if mesh is None:
        return []
    return [mesh[name].get_group() for name in names if mesh[name].size() > 1]


def reduce_(t: torch.Tensor, groups: list, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce `t` in place over each group in turn (a sum over dp then pp is a sum over both)."""
    for group in groups:
        dist.all_reduce(t, op=op, group=group)
    return t


def sum_to_host(value: torch.Tensor | float, groups: list, device: torch.device) -> float:
    """The sum of a scalar over `groups`, read back to the host (one sync: for log steps)."""
    if not groups:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64).reshape(1).to(devices.collective_device(device))
    return float(reduce_(t, groups).item())


def all_finite(device: torch.device, *values: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on the collective device: every rank's `values` are finite. No host sync."""
    ok = torch.stack([torch.isfinite(v.detach()).all() for v in values]).all()
    if dist.is_initialized():
        flag = ok.to(devices.collective_device(device), torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return flag.bool()
    return ok


def max_to_host(values: list[float], device: torch.device) -> list[float]:
    """Each value's maximum over every rank (the slowest rank's time, the fullest rank's memory)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=devices.collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def agree(flag: bool, device: torch.device) -> bool:
    """True if any rank says so (so every rank stops at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=devices.collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class DeferredAgreement:
    """`agree` without a wait: the vote cast at one step is counted at the next, when its all-reduce (and, on an
    accelerator, its copy to the host) has long finished. Every rank counts the same votes at the same step."""

    def __init__(self, device: torch.device):
        self.device = devices.collective_device(device)
        self._pending = None

    def vote(self, flag: bool) -> bool:
        """Cast `flag`; return whether any rank voted yes at the previous call (one process: `flag` itself)."""
        if not dist.is_initialized():
            return flag
        agreed = self._count()
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
        event = None
        if self.device.type != "cpu":
            work.wait()  # orders the copy after the reduction on the device's stream; the host does not wait
            host = torch.empty(1, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.Event(device=self.device)
            event.record()
            t, work = host, None
        self._pending = (work, event, t)
        return agreed

    def _count(self) -> bool:
        if self._pending is None:
            return False
        work, event, t = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        if event is not None:
            event.synchronize()
        return bool(t.item())
