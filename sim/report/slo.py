"""Service-level objectives (SLOs): latency targets, whether a replay meets them, and goodput.

An SLO is written `METRIC_pXX=DURATION`, several separated by commas, e.g. `ttft_p99=2s,tpot_p99=100ms`:

- METRIC is `ttft` (first token - arrival), `tpot` ((finish - first token) / (output tokens - 1), requests with at
  least 2 output tokens) or `e2e` (finish - arrival), as defined in `sim.records.summary.summarize`;
- pXX is a percentile in (0, 100], e.g. p50, p90, p99, p99.9, taken over the completed requests with numpy's
  linear interpolation (the same as summary.json's p50/p90/p99);
- DURATION is a number with an optional unit (s, ms, us, min).

A replay *meets* its SLOs when every SLO's percentile is <= its threshold. A replay with no completed request meets
none. A `tpot` SLO over a replay whose completed requests all have 1 output token (so no TPOT exists) holds.
Requests that were rejected (longer than the max model length, or never placeable) are not in the percentiles (as in
summary.json); reports show their count beside.

Goodput: requests that meet the per-request targets, per second of the replay's duration (summary.json's
`duration_s`). A request meets them when it completed and, for each metric that an SLO names, its own value is <= the
threshold of that metric's highest-percentile SLO (so `ttft_p99=2s` means: a good request has TTFT <= 2 s). TPOT does
not apply to a request with 1 output token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from sim.errors import UserError
from sim.records.requests import RequestLog
from sim.units import parse_duration

METRICS = ("ttft", "tpot", "e2e")
_NAME = re.compile(r"^(ttft|tpot|e2e)_p([0-9]+(?:\.[0-9]+)?)$")


@dataclass(frozen=True)
class SLO:
    metric: str  # ttft, tpot or e2e
    percentile: float  # (0, 100]
    threshold_s: float

    @property
    def name(self) -> str:
        return f"{self.metric}_p{self.percentile:g}"

    def describe(self) -> str:
        return f"{self.name} <= {format_seconds(self.threshold_s)}"


def display_unit(metric: str) -> tuple[str, float]:
    """How a metric's durations are shown wherever they are labelled: TPOT in milliseconds (per-token times are
    tens of ms), TTFT and end-to-end latency in seconds. Returns (unit, factor from seconds)."""
    return ("ms", 1000.0) if metric == "tpot" else ("s", 1.0)


def format_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "n/a"
    if s == 0:
        return "0 s"
    if abs(s) < 1:
        return f"{s * 1000:.4g} ms"
    return f"{s:.4g} s"


def parse_slos(text: str) -> list[SLO]:
    """'ttft_p99=2s,tpot_p99=100ms' -> [SLO('ttft', 99, 2.0), SLO('tpot', 99, 0.1)]."""
    slos: list[SLO] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        m = _NAME.match(name.strip().lower())
        if not sep or not m:
            raise UserError(
                f"cannot read SLO {item!r}: expected METRIC_pXX=DURATION with METRIC one of "
                f"{', '.join(METRICS)}, e.g. ttft_p99=2s"
            )
        pct = float(m.group(2))
        if not 0 < pct <= 100:
            raise UserError(f"SLO {item!r}: the percentile must be in (0, 100]")
        threshold = parse_duration(value)
        if not threshold > 0:
            raise UserError(f"SLO {item!r}: the threshold must be positive")
        slo = SLO(m.group(1), pct, threshold)
        if any(s.name == slo.name for s in slos):
            raise UserError(f"SLO {slo.name} is given twice")
        slos.append(slo)
    if not slos:
        raise UserError("give at least one SLO, e.g. --slo ttft_p99=2s,tpot_p99=100ms")
    return slos


def format_slos(slos: list[SLO]) -> str:
    return ",".join(f"{s.name}={s.threshold_s:g}s" for s in slos)


def per_request_latency(requests: RequestLog) -> dict[str, np.ndarray]:
    """Each metric per request (trace order), NaN where it does not exist (not completed; tpot with 1 output token)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = requests.first_token_s - requests.arrival_s
        e2e = requests.finish_s - requests.arrival_s
        denom = (requests.output_tokens - 1).astype(np.float64)
        tpot = np.where(
            denom > 0, (requests.finish_s - requests.first_token_s) / np.where(denom > 0, denom, 1.0), np.nan
        )
    completed = ~np.isnan(requests.finish_s)
    return {
        "ttft": np.where(completed, ttft, np.nan),
        "tpot": np.where(completed, tpot, np.nan),
        "e2e": np.where(completed, e2e, np.nan),
    }


def slo_values(slos: list[SLO], latency: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Each SLO's percentile over the requests where its metric exists (None when none does)."""
    out: dict[str, float | None] = {}
    for s in slos:
        values = latency[s.metric]
        values = values[~np.isnan(values)]
        out[s.name] = float(np.percentile(values, s.percentile)) if len(values) else None
    return out


def meets(slos: list[SLO], values: dict[str, float | None], completed: int) -> bool:
    """Every SLO holds (see the module docstring for the empty cases)."""
    if completed == 0:
        return False
    for s in slos:
        v = values[s.name]
        if v is None:
            if s.metric != "tpot":
                return False
            continue
        if not v <= s.threshold_s:
            return False
    return True


def per_request_thresholds(slos: list[SLO]) -> dict[str, float]:
    """For each metric an SLO names: the threshold of its highest-percentile SLO."""
    best: dict[str, SLO] = {}
    for s in slos:
        if s.metric not in best or s.percentile > best[s.metric].percentile:
            best[s.metric] = s
    return {m: s.threshold_s for m, s in best.items()}


def good_requests(slos: list[SLO], latency: dict[str, np.ndarray], completed: np.ndarray) -> np.ndarray:
    """Boolean per request: completed and within every per-request threshold (module docstring)."""
    good = completed.copy()
    for metric, threshold in per_request_thresholds(slos).items():
        v = latency[metric]
        ok = v <= threshold
        if metric == "tpot":
            ok |= np.isnan(v)  # 1 output token: TPOT does not apply
        good &= ok
    return good
