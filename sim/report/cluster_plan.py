"""Replicas by cluster simulation: the fewest replicas behind a router that meet the SLOs at the target rate.

`sim report` first finds one replica's capacity (`sim.report.capacity`); dividing the target rate by it assumes
perfect balance. Here the trace is replayed by N replicas behind the router (`sim.cluster`): the trace tiled N times
(`sim.traces.tools.tile_trace`: back to back, at its own rate) and scaled to the target rate, so that each replica
is given about as many requests, over as long, as one replica was in the capacity search (the trace once, replayed
alone, would give each replica 1/N of it and hide any queue that builds up over a longer run).

N is searched: the division's estimate first; while it passes, fewer, and while it fails, more (the step doubling
each time: 1, 2, 4, ...), until the answer changes; then bisection between the highest failing and the lowest
passing count. It
assumes that meeting the SLOs is monotone in N. Each probe is kept and shown. A probe passes when every SLO holds
over the cluster's requests (`sim.report.slo.meets`), as a capacity probe does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from sim.cluster.run import ClusterOptions, simulate_cluster
from sim.cluster.summary import cluster_summary
from sim.report.slo import SLO, meets, per_request_latency, slo_values
from sim.serving.replay import ReplayOptions
from sim.traces.model import Trace
from sim.traces.tools import scale_trace, tile_trace

MAX_REPLICAS = 4096


@dataclass
class ClusterProbe:
    """One cluster replay at the target rate: its replica count, whether it met the SLOs, and its figures."""

    replicas: int
    passed: bool
    slo_values: dict[str, float | None]
    prefix_cache_hit_rate: float
    load_imbalance: float | None  # max / mean of requests routed
    busy_imbalance: float | None  # max / mean of busy time
    completed: int
    rejected: int


@dataclass
class ClusterPlan:
    """The replica search of one configuration under one router."""

    router: str
    replicas: int | None  # fewest that passed (None: none up to the limit)
    by_division: int | None  # the capacity search's estimate, the search's start
    probes: list[ClusterProbe] = field(default_factory=list)

    @property
    def operating_point(self) -> ClusterProbe | None:
        """The probe at `replicas` (or the largest probed when none passed)."""
        if not self.probes:
            return None
        if self.replicas is not None:
            return next(p for p in self.probes if p.replicas == self.replicas)
        return max(self.probes, key=lambda p: p.replicas)


def probe_cluster(trace: Trace, options: ReplayOptions, replicas: int, router: str, slos: list[SLO]) -> ClusterProbe:
    """Replay `trace` (already at the target rate) through `replicas` replicas behind `router`; check the SLOs."""
    run = simulate_cluster(trace, ClusterOptions(options, replicas, router, options.seed))
    summary = cluster_summary(run)
    latency = per_request_latency(run.requests)
    values = slo_values(slos, latency)
    completed = int((~np.isnan(run.requests.finish_s)).sum())
    imbalance = summary["load_imbalance"]["all"]
    return ClusterProbe(
        replicas,
        meets(slos, values, completed),
        values,
        summary["sharing"]["prefix_cache_hit_rate"],
        imbalance["requests"],
        imbalance["busy_s"],
        completed,
        summary["requests"]["rejected"],
    )


def search_replicas(
    trace: Trace,
    target_rate: float,
    options: ReplayOptions,
    router: str,
    slos: list[SLO],
    by_division: int | None,
    limit: int = MAX_REPLICAS,
) -> ClusterPlan:
    """The search of the module docstring for one configuration and router."""
    plan = ClusterPlan(router, None, by_division)
    seen: dict[int, ClusterProbe] = {}

    def passes(n: int) -> bool:
        if n not in seen:
            seen[n] = probe_cluster(scale_trace(tile_trace(trace, n), rate=target_rate), options, n, router, slos)
            plan.probes.append(seen[n])
        return seen[n].passed

    n = max(1, min(by_division or 1, limit))
    low: int | None = None  # the highest count known to fail
    high: int | None = None  # the lowest count known to pass
    step = 1
    if passes(n):
        high = n
        while high > 1:  # fewer, the step doubling, until one fails
            candidate = max(1, high - step)
            if not passes(candidate):
                low = candidate
                break
            high, step = candidate, step * 2
    else:
        low = n
        while high is None:  # more, the step doubling, until one passes or the limit fails
            candidate = min(low + step, limit)
            if passes(candidate):
                high = candidate
            elif candidate >= limit:
                break
            else:
                low, step = candidate, step * 2
    while high is not None and low is not None and high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    plan.replicas = high
    plan.probes.sort(key=lambda p: p.replicas)
    return plan


def with_block_size(options: ReplayOptions, allocator: str, block_size: int, gpu) -> ReplayOptions:
    """The replica options of one report configuration."""
    return dataclasses.replace(options, allocator=allocator, block_size=block_size, gpu=gpu)
