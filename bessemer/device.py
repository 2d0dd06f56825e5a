"""The one place that knows device kinds: which accelerator this process uses (cuda, incl. ROCm; npu via
torch_npu; xpu; mps; else cpu), its collective backend, its peak FLOP/s, memory figures and synchronisation.

Everything goes through `torch.accelerator`, so a new kind needs a line in the tables below, not a new code path.
"""

from __future__ import annotations

import importlib.util
import os
import resource

import torch

# torch.distributed backend by device type; ROCm builds report "cuda" and NCCL there is RCCL
BACKENDS = {"cuda": "nccl", "npu": "hccl", "xpu": "xccl"}

# Dense bf16 peak FLOP/s (not the "with sparsity" figures), matched as substrings of the device name
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "910B": 320e12,  # Ascend 910B (Huawei's published 16-bit figure)
    "MI300X": 1307e12,
    "MI250X": 383e12,
}

# device types whose AdamW has a fused kernel (one pass over every parameter)
FUSED_OPTIMIZER = ("cuda", "xpu", "mps", "cpu")  # cpu: several times faster than foreach
# FlexAttention has compiled forward and backward kernels (Triton) here; on CPUs torch 2.13 has no backward
FLEX_ATTENTION = ("cuda", "xpu")
# context parallelism shards the sequence inside SDPA's CUDA flash / efficient kernels
CONTEXT_PARALLEL = ("cuda",)


def _import_plugin(device_type: str) -> None:
    """Out-of-tree devices register themselves with torch on import (torch_npu adds "npu")."""
    if device_type == "npu" and importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401


def default_device() -> torch.device:
    """This process's accelerator (index LOCAL_RANK under torchrun), or the CPU when there is none."""
    _import_plugin("npu")
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str) -> torch.device:
    """ "auto" -> default_device(); otherwise the named device ("cuda:1", "npu", "cpu" ...)."""
    if name == "auto":
        return default_device()
    device = torch.device(name)
    _import_plugin(device.type)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    return device


def is_accelerator(device: torch.device) -> bool:
    return device.type != "cpu"


def dist_backend(device: torch.device) -> str:
    """The collective backend for `device`: NCCL, HCCL, XCCL, else gloo (CPU, mps)."""
    return BACKENDS.get(device.type, "gloo")


def collective_device(device: torch.device) -> torch.device:
    """Where small tensors for collectives must live: on the device for its own backend, on the CPU for gloo."""
    return device if device.type in BACKENDS else torch.device("cpu")


def set_current(device: torch.device) -> None:
    """Make `device` this process's current accelerator (kernels and collectives default to it)."""
    if is_accelerator(device) and device.index is not None:
        torch.accelerator.set_device_index(device.index)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (no-op on the CPU)."""
    if is_accelerator(device):
        torch.accelerator.synchronize(device)


def device_name(device: torch.device) -> str:
    if not is_accelerator(device):
        return f"CPU, {torch.get_num_threads()} threads"
    backend = getattr(torch, device.type, None)
    get_name = getattr(backend, "get_device_name", None)
    return get_name(device) if get_name else device.type


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of `device`, or None when it is not in the table (CPUs included): no made-up MFU."""
    if not is_accelerator(device):
        return None
    name = device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def supports_fused_optimizer(device: torch.device) -> bool:
    return device.type in FUSED_OPTIMIZER


def supports_flex_attention(device: torch.device) -> bool:
    return device.type in FLEX_ATTENTION


def supports_context_parallel(device: torch.device) -> bool:
    return device.type in CONTEXT_PARALLEL


def reset_peak_memory(device: torch.device) -> None:
    if is_accelerator(device):
        torch.accelerator.reset_peak_memory_stats(device)


def memory_gib(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory since the last reset, or this process's peak resident set on the CPU."""
    if is_accelerator(device):
        return {
            "mem_peak_gib": torch.accelerator.max_memory_allocated(device) / 2**30,
            "mem_reserved_gib": torch.accelerator.max_memory_reserved(device) / 2**30,
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    return {"rss_peak_gib": rss_kib / 2**20}


def total_memory(device: torch.device) -> int | None:
    """Bytes of memory the accelerator has in all (None where the backend does not say)."""
    if not is_accelerator(device):
        return None
    mem_get_info = getattr(getattr(torch, device.type, None), "mem_get_info", None)  # cuda, xpu, npu have it
    if mem_get_info is None:
        return None
    try:
        return int(mem_get_info(device)[1])
    except RuntimeError:
        return None
