"""The host link's share of an iteration: the copies of a host tier (sim.allocators.host_tier), priced by bytes.

An iteration with host copies (`Batch.transfers`) takes the compute model's time plus the link time of its copies:

    link time = latency (if any copy) + max(bytes to the GPU, bytes to the host) / bandwidth

each direction at the link's bandwidth, the two directions at once (PCIe and NVLink-C2C are full duplex), not
overlapped with compute (vLLM v0 ran its swap copies before the forward pass on the same stream; for the offloaded
prefix cache this is the cautious bound, vLLM V1 loads and stores asynchronously). The links (`HOST_LINKS`) are
per-direction peak figures of one GPU's connection to its host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cost.base import CostModel
from sim.errors import UserError
from sim.hardware.gpus import NVLINK_C2C, PCIE_GEN4_X16, PCIE_GEN5_X16
from sim.serving.request import Batch

#: name -> (bytes/s each way, source); the figures are the GPU presets' (sim.hardware.gpus)
HOST_LINKS: dict[str, tuple[float, str]] = {
    "pcie4": (PCIE_GEN4_X16, "PCIe Gen4 x16: 16 lanes x 2 GB/s nominal each way (31.5 GB/s after 128b/130b)"),
    "pcie5": (PCIE_GEN5_X16, "PCIe Gen5 x16: 16 lanes x 4 GB/s nominal each way (63 GB/s after 128b/130b)"),
    "c2c": (NVLINK_C2C, "NVLink-C2C (Grace Hopper / GB200): 900 GB/s both ways together, 450 GB/s each way"),
}


@dataclass(frozen=True)
class HostLink:
    """The GPU-host link: bandwidth in bytes/s each way, and a fixed latency per iteration with copies (s).

    A measured link (`sim calibrate`: `ProfileCostModel.host_link`) may differ by direction: `bytes_per_s` is then
    the bandwidth to the GPU, `bytes_per_s_to_host` the bandwidth to the host, and `bytes_per_s_duplex` (if any) caps
    both directions at once (a link that is not fully duplex):

        time = latency + max(to GPU / bytes_per_s, to host / bytes_per_s_to_host, (to GPU + to host) / duplex)

    Without those two the formula is the module docstring's, bit for bit.
    """

    name: str
    bytes_per_s: float
    latency_s: float = 0.0
    bytes_per_s_to_host: float | None = None  # None: bytes_per_s
    bytes_per_s_duplex: float | None = None  # None: each direction at its own bandwidth, both at once

    def time(self, bytes_to_gpu: int, bytes_to_host: int) -> float:
        """Seconds the link takes for one iteration's copies (class docstring); 0 without copies."""
        if not bytes_to_gpu and not bytes_to_host:
            return 0.0
        if self.bytes_per_s_to_host is None and self.bytes_per_s_duplex is None:
            return self.latency_s + max(bytes_to_gpu, bytes_to_host) / self.bytes_per_s
        to_host = self.bytes_per_s if self.bytes_per_s_to_host is None else self.bytes_per_s_to_host
        t = max(bytes_to_gpu / self.bytes_per_s, bytes_to_host / to_host)
        if self.bytes_per_s_duplex is not None:
            t = max(t, (bytes_to_gpu + bytes_to_host) / self.bytes_per_s_duplex)
        return self.latency_s + t

    def describe(self) -> dict:
        out = {"name": self.name, "bytes_per_s": self.bytes_per_s, "latency_s": self.latency_s}
        if self.bytes_per_s_to_host is not None or self.bytes_per_s_duplex is not None:
            out["bytes_per_s_to_host"] = self.bytes_per_s_to_host
            out["bytes_per_s_duplex"] = self.bytes_per_s_duplex
        return out


def resolve_host_link(spec: str | float | None, gpu_link: float | None, gpu_name: str) -> HostLink:
    """`--host-link`: a name of HOST_LINKS, or bytes/s; None: the GPU's own host link (GpuSpec.host_link_bandwidth).
    A UserError when there is none or the speed is not positive."""
    if spec is None:
        if gpu_link is None:
            raise UserError(
                f"a host tier needs a link: {gpu_name} has no host_link_bandwidth; give --host-link "
                f"{'|'.join(HOST_LINKS)}|BYTES_PER_S"
            )
        return HostLink(f"{gpu_name} host link", float(gpu_link))
    if isinstance(spec, str) and spec.lower() in HOST_LINKS:
        return HostLink(spec.lower(), HOST_LINKS[spec.lower()][0])
    try:
        value = float(spec)
    except (TypeError, ValueError):
        names = ", ".join(HOST_LINKS)
        raise UserError(f"--host-link must be one of {names} or bytes per second, got {spec!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise UserError(f"--host-link speed must be a positive number of bytes per second, got {spec!r}")
    return HostLink(f"{value:g} B/s", value)


class HostLinkCost(CostModel):
    """A compute cost model plus the link time of each iteration's host copies (module docstring)."""

    def __init__(self, compute: CostModel, link: HostLink):
        self.compute = compute
        self.link = link
        self.link_time_s = 0.0  # summed over every iteration priced

    def step_time(self, batch: Batch) -> float:
        t = self.compute.step_time(batch)
        if batch.transfers:
            extra = self.link.time(batch.bytes_to_gpu, batch.bytes_to_host)
            self.link_time_s += extra
            t += extra
        return t

    def decode_times(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        return self.compute.decode_times(num_seqs, context_tokens)  # pure decode moves nothing over the link

    def decode_time_list(self, num_seqs: int, first_context: int, rounds: int) -> list[float]:
        return self.compute.decode_time_list(num_seqs, first_context, rounds)

    def describe(self) -> dict:
        return {
            **self.compute.describe(),
            "host_link": self.link.describe(),
        }


__all__ = ["HOST_LINKS", "HostLink", "HostLinkCost", "resolve_host_link"]
