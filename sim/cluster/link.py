"""The KV link of a disaggregated cluster: how long a prompt's KV takes from a prefill replica to the decode pool.

Each prefill replica sends over its own link, one transfer after another (first come, first served): a transfer of
B bytes that is ready at time r starts at s = max(r, when the previous one left the link), occupies the link for
B / bandwidth seconds and arrives `latency_s` after it has left. Bandwidth is bytes/s in one direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.errors import UserError
from sim.units import MAX_DURATION_S

# Presets: (bytes/s in each direction, latency in seconds). Bandwidths are the nominal line rates (NVLink 4 per
# direction per H100 SXM; InfiniBand NDR 400 Gb/s and HDR 200 Gb/s per NIC; 100 GbE), latencies the order of a
# one-sided RDMA write of one transfer (a few microseconds on NVLink, ~10 us over InfiniBand, ~50 us over Ethernet
# with RoCE): both are what one transfer sees on an idle link; give measured figures with --kv-link-latency and a
# number for --kv-link where you have them.
KV_LINKS: dict[str, tuple[float, float]] = {
    "nvlink": (450e9, 5e-6),
    "ib-400g": (50e9, 10e-6),
    "ib-200g": (25e9, 10e-6),
    "eth-100g": (12.5e9, 50e-6),
}


def parse_kv_link(text: str, latency_s: float | None = None) -> KVLink:
    """A link from a preset name or a bandwidth in bytes/s (e.g. 50e9); latency_s overrides the preset's (a plain
    bandwidth has none unless given)."""
    if text in KV_LINKS:
        bandwidth, preset_latency = KV_LINKS[text]
    else:
        try:
            bandwidth = float(text)
        except ValueError:
            raise UserError(
                f"--kv-link {text!r} is neither a link ({', '.join(KV_LINKS)}) nor a bandwidth in bytes/s"
            ) from None
        preset_latency = 0.0
    return KVLink(bandwidth, preset_latency if latency_s is None else latency_s)


@dataclass
class KVLink:
    """One prefill replica's link: its figures and the transfers it has carried."""

    bandwidth: float  # bytes / s
    latency_s: float = 0.0
    free_at: float = float("-inf")  # when the last transfer left the link
    num_bytes: int = 0
    waits: list[float] = field(default_factory=list)  # per transfer: seconds queued behind earlier ones
    times: list[float] = field(default_factory=list)  # per transfer: ready -> arrived, seconds

    def __post_init__(self) -> None:
        if not self.bandwidth > 0 or self.bandwidth == float("inf"):
            raise UserError(f"the KV link's bandwidth must be a positive number of bytes/s, got {self.bandwidth!r}")
        if not 0 <= self.latency_s <= MAX_DURATION_S:
            raise UserError(f"--kv-link-latency must be between 0 and {MAX_DURATION_S:g} s, got {self.latency_s!r}")

    def send(self, ready_s: float, num_bytes: int) -> float:
        """Send `num_bytes` ready at `ready_s`; returns when they have arrived (seconds)."""
        start = max(ready_s, self.free_at)
        self.free_at = start + num_bytes / self.bandwidth
        arrived = self.free_at + self.latency_s
        self.num_bytes += num_bytes
        self.waits.append(start - ready_s)
        self.times.append(arrived - ready_s)
        return arrived

    @staticmethod
    def summarize(links: list[KVLink]) -> dict:
        """The `kv_transfer` figures of a disaggregated cluster's summary (README, "Clusters")."""
        times = np.array([t for link in links for t in link.times])
        waits = np.array([w for link in links for w in link.waits])
        stats = lambda v: (  # noqa: E731
            {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
            if len(v)
            else {"mean": None, "p50": None, "p99": None}
        )
        return {
            "link_bandwidth_bytes_per_s": links[0].bandwidth if links else None,
            "link_latency_s": links[0].latency_s if links else None,
            "transfers": len(times),
            "bytes": int(sum(link.num_bytes for link in links)),
            "time_s": stats(times),
            "queued_s": stats(waits),
        }
