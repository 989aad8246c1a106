"""GPUs: `GpuSpec` (one GPU's datasheet figures), the presets in `GPUS`, and `resolve_gpu`."""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError
from sim.units import GiB


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures."""

    name: str
    memory_bytes: int  # device memory, bytes
    hbm_bandwidth: float  # bytes / s
    bf16_flops: float  # dense bf16 tensor FLOP / s
    source: str = ""


# Vendor datasheets: memory as the driver reports it, peak HBM bandwidth, dense (no sparsity) bf16 tensor throughput.
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("a100-40gb", 40 * GiB, 1.555e12, 312e12, "NVIDIA A100 datasheet (SXM4 40GB)"),
        GpuSpec("a100-80gb", 80 * GiB, 2.039e12, 312e12, "NVIDIA A100 datasheet (SXM4 80GB)"),
        GpuSpec("h100-80gb", 80 * GiB, 3.35e12, 989.4e12, "NVIDIA H100 datasheet (SXM5)"),
        GpuSpec("h200", 141 * 10**9, 4.8e12, 989.4e12, "NVIDIA H200 datasheet (SXM)"),
        GpuSpec("l40s", 48 * 10**9, 0.864e12, 362.05e12, "NVIDIA L40S datasheet"),
    )
}


def resolve_gpu(name: str) -> GpuSpec:
    if name not in GPUS:
        raise UserError(f"unknown GPU {name!r}; presets: {', '.join(GPUS)}")
    return GPUS[name]
