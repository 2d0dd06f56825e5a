"""bessemer.device: device kinds, backends, peaks, memory; and no other module names CUDA."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bessemer import device as devices

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "kind, backend", [("cuda", "nccl"), ("npu", "hccl"), ("xpu", "xccl"), ("mps", "gloo"), ("cpu", "gloo")]
)
def test_backend_follows_the_device_type(kind, backend):
    device = SimpleNamespace(type=kind)  # torch.device("npu") exists only once torch_npu is imported
    assert devices.dist_backend(device) == backend
    assert devices.collective_device(device).type == (kind if backend != "gloo" else "cpu")


def test_peak_table_has_the_recipes_devices_and_cpus_report_none():
    for name in ("H100", "H200", "A100", "910B"):
        assert devices.PEAK_BF16_FLOPS[name] > 1e14
    assert devices.PEAK_BF16_FLOPS["H100"] == 989e12
    assert devices.peak_flops(torch.device("cpu")) is None


def test_cpu_device_memory_and_sync():
    cpu = devices.pick_device("cpu")
    assert cpu == torch.device("cpu") and not devices.is_accelerator(cpu)
    devices.synchronize(cpu)
    devices.reset_peak_memory(cpu)
    assert devices.memory_gib(cpu)["rss_peak_gib"] > 0
    if torch.accelerator.current_accelerator(check_available=True) is None:
        assert devices.default_device() == cpu


def test_no_module_but_device_py_calls_torch_cuda():
    offenders = []
    for path in [*ROOT.glob("bessemer/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        if path.name == "device.py" and path.parent.name == "bessemer":
            continue
        if re.search(r"torch\.cuda\b", path.read_text(encoding="utf-8")):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"use bessemer.device instead of torch.cuda in {offenders}"
