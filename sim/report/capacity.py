"""Capacity search: the highest arrival rate at which one replica meets every SLO.

The rate of a trace is (rows - 1) / (last arrival - first arrival), requests/s (as `sim trace stats` defines it).
A *probe* at rate r replays the trace with its arrival times scaled to that rate (`sim.traces.tools.scale_trace`: gaps
divided by r / native rate, lengths unchanged) and checks the SLOs (`sim.report.slo`).

The search (`CapacitySearch`) assumes that meeting the SLOs is monotone in the rate: if a replica meets them at rate
r, it meets them at every lower rate. It is a bisection on that assumption:

1. Bracketing. Probe the start rate (by default the trace's own rate). While a probe passes, probe twice the rate;
   while it fails, probe half the rate; until one rate passes and twice it fails (at most `max_steps` steps each way:
   a start rate x 2^-max_steps that still fails means the SLOs cannot be met at any rate -- capacity 0 -- and one
   x 2^max_steps that passes is reported as a lower bound).
2. Bisection. With lo passing and hi failing, probe the geometric mean sqrt(lo x hi) and keep the half that still
   brackets, until hi / lo <= 1 + precision.

The capacity is lo, the highest rate known to pass; the true threshold lies in [lo, hi), so the figure is low by less
than `precision` (relative). With precision p the bisection takes about log2(log 2 / log(1 + p)) probes (6 for 2%),
after 2 or more bracketing probes. Every probe is kept and shown in reports, so a non-monotone case (a failing probe
below a passing one, which bursts in a short trace can cause) is visible; `CapacitySearch.non_monotone` flags it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.allocators.base import MEMORY_CATEGORIES
from sim.errors import UserError
from sim.report.slo import SLO, good_requests, meets, per_request_latency, slo_values
from sim.serving.replay import ReplayOptions, replay
from sim.traces.model import Trace
from sim.traces.tools import scale_trace

DEFAULT_PRECISION = 0.02
MAX_STEPS = 20  # doublings or halvings while bracketing


def trace_rate(trace: Trace) -> float:
    """(rows - 1) / duration, requests/s: the rate `scale_trace` sets."""
    if len(trace) < 2 or trace.duration_s <= 0:
        raise UserError(f"{trace.path}: a capacity search needs at least two requests at different times")
    return (len(trace) - 1) / trace.duration_s


class CapacitySearch:
    """The search as a state machine, so that a driver can run many at once: `next_rate()` says what to probe
    (None when done), `record(rate, passed)` gives the answer."""

    def __init__(self, start_rate: float, precision: float = DEFAULT_PRECISION, max_steps: int = MAX_STEPS):
        if not (math.isfinite(start_rate) and start_rate > 0):
            raise UserError(f"the start rate must be a positive number of requests/s, got {start_rate:g}")
        if not 0 < precision < 1:
            raise UserError(f"--precision must be in (0, 1), got {precision:g}")
        self.start_rate = start_rate
        self.precision = precision
        self.max_steps = max_steps
        self.lo: float | None = None  # highest rate that passed
        self.hi: float | None = None  # lowest rate that failed
        self.history: list[tuple[float, bool]] = []
        self.non_monotone = False

    @property
    def done(self) -> bool:
        return self.next_rate() is None

    @property
    def capacity(self) -> float:
        """The highest rate known to pass (0 when none passed); a lower bound when `unbounded`."""
        return self.lo if self.lo is not None else 0.0

    @property
    def unbounded(self) -> bool:
        """Every probe passed, up to start x 2^max_steps: the capacity is at least that."""
        return self.hi is None and self.lo is not None and self._bracketing_steps >= self.max_steps

    @property
    def unattainable(self) -> bool:
        """Every probe failed, down to start x 2^-max_steps."""
        return self.lo is None and self.hi is not None and self._bracketing_steps >= self.max_steps

    @property
    def _bracketing_steps(self) -> int:
        """Doublings or halvings taken while only one side of the bracket is known."""
        return len(self.history) - 1

    def next_rate(self) -> float | None:
        if not self.history:
            return self.start_rate
        if self.lo is None:  # only failures so far: halve
            return None if self._bracketing_steps >= self.max_steps else self.hi / 2
        if self.hi is None:  # only passes so far: double
            return None if self._bracketing_steps >= self.max_steps else self.lo * 2
        if self.hi / self.lo <= 1 + self.precision:
            return None
        return math.sqrt(self.lo * self.hi)

    def record(self, rate: float, passed: bool) -> None:
        self.history.append((rate, passed))
        if passed:
            if self.hi is not None and rate >= self.hi:
                self.non_monotone = True
            if self.lo is None or rate > self.lo:
                self.lo = rate
        else:
            if self.lo is not None and rate <= self.lo:
                self.non_monotone = True
            if self.hi is None or rate < self.hi:
                self.hi = rate


@dataclass
class Probe:
    """One replay at one rate, with what reports need of it (small: the full steps are not kept)."""

    config: str
    rate: float  # requests/s of the scaled trace
    factor: float  # rate / the trace's own rate
    passed: bool
    slo_values: dict  # SLO name -> its percentile (s) or None
    goodput_rps: float  # requests meeting the per-request targets / duration
    good_fraction: float  # of all requests of the trace (rejected ones included)
    summary: dict  # summary.json of the replay
    timeline: dict = field(default_factory=dict)  # downsampled: time_s, batch size, KV used fraction
    quantiles: dict = field(default_factory=dict)  # metric -> values at QUANTILE_LEVELS (for distributions)
    wall_s: float = 0.0


QUANTILE_LEVELS = np.linspace(0.0, 100.0, 201)
TIMELINE_POINTS = 400


def timeline(steps: dict[str, np.ndarray], capacity_bytes: int, points: int = TIMELINE_POINTS) -> dict:
    """Batch size and KV use over time, averaged into at most `points` equal time buckets (iteration-weighted mean
    of each bucket; empty buckets are left out). KV used = token states + reserved + internal fragmentation (held)."""
    t = steps["time_s"]
    if len(t) == 0:
        return {"time_s": [], "batch_size": [], "kv_used": [], "waiting": []}
    held = steps["token_states_bytes"] + steps["reserved_bytes"] + steps["internal_fragmentation_bytes"]
    used = held / capacity_bytes
    start, end = float(t[0]), float(t[-1] + steps["duration_s"][-1])
    n = min(points, len(t))
    edges = np.linspace(start, end, n + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n - 1)
    counts = np.bincount(idx, minlength=n)
    keep = counts > 0

    def mean(values: np.ndarray) -> list[float]:
        sums = np.bincount(idx, weights=values, minlength=n)
        return [round(float(x), 6) for x in (sums[keep] / counts[keep])]

    centres = (edges[:-1] + edges[1:]) / 2
    return {
        "time_s": [round(float(x), 4) for x in centres[keep]],
        "batch_size": mean(steps["running"]),
        "kv_used": mean(used),
        "waiting": mean(steps["waiting"]),
    }


def evaluate_probe(
    trace: Trace,
    options: ReplayOptions,
    rate: float,
    slos: list[SLO],
    config: str = "",
    native_rate: float | None = None,
) -> Probe:
    """Replay `trace` scaled to `rate` requests/s and check the SLOs."""
    import time

    native = native_rate if native_rate is not None else trace_rate(trace)
    scaled = scale_trace(trace, rate=rate)
    t0 = time.perf_counter()
    result = replay(scaled, options)
    wall = time.perf_counter() - t0
    requests = result.requests
    completed = ~np.isnan(requests.finish_s)
    latency = per_request_latency(requests)
    values = slo_values(slos, latency)
    passed = meets(slos, values, int(completed.sum()))
    good = good_requests(slos, latency, completed)
    duration = result.summary["duration_s"]
    quantiles = {}
    for metric in ("ttft", "tpot", "e2e"):
        v = latency[metric][~np.isnan(latency[metric])]
        quantiles[metric] = [float(x) for x in np.percentile(v, QUANTILE_LEVELS)] if len(v) else []
    summary = dict(result.summary)
    summary["trace"] = trace.path
    return Probe(
        config=config,
        rate=rate,
        factor=rate / native,
        passed=passed,
        slo_values=values,
        goodput_rps=float(good.sum()) / duration if duration > 0 else 0.0,
        good_fraction=float(good.sum()) / len(trace),
        summary=summary,
        timeline=timeline(result.steps, result.budget.capacity_bytes),
        quantiles=quantiles,
        wall_s=wall,
    )


def memory_fractions(summary: dict) -> dict[str, float]:
    return {c: float(summary["kv_memory"][c]) for c in MEMORY_CATEGORIES}


def replicas_needed(target_rps: float, capacity_rps: float, max_utilization: float = 1.0) -> int | None:
    """ceil(target / (capacity x max_utilization)) (None when the capacity is 0): see `sim.report.plan`."""
    from sim.report.plan import replicas_needed as needed

    return needed(target_rps, capacity_rps, max_utilization)
