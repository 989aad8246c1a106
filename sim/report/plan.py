"""A deployment plan from a capacity: replicas, headroom, cost. The one place these figures are defined.

- capacity c: requests/s one replica (tp GPUs) serves within the SLOs (`sim.report.capacity`).
- max utilization F in (0, 1] (`--max-utilization`, default 1): the share of its capacity each replica may be
  planned to run at. replicas = ceil(target / (c x F)); GPUs = replicas x tp.
- headroom = 1 - target / (replicas x c): the share of the deployment's capacity left unused at the target rate
  (each replica runs at target / replicas req/s, i.e. at 1 - headroom of its capacity). It is >= 1 - F.
- cost per hour = replicas x tp x price of one GPU-hour (USD; the GpuSpec's `price_per_hour`, or `--price`).
- output tokens per request t: output tokens generated (x parallel sequences) for the requests that completed in the
  replay at the capacity, divided by the requests of the trace (rejected ones included: they arrive, and produce
  nothing). Output tokens per hour at the target rate = target x t x 3600.
- cost per million output tokens = cost per hour / (target x t x 3600) x 1e6, USD: what the deployment costs per
  million tokens it generates when it serves exactly the target rate (idle headroom is paid for, so more headroom
  raises it).
"""

from __future__ import annotations

import math

from sim.errors import UserError

SECONDS_PER_HOUR = 3600.0


def check_max_utilization(value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"--max-utilization must be in (0, 1], got {value!r}")
    return float(value)


def replicas_needed(target_rps: float, capacity_rps: float, max_utilization: float = 1.0) -> int | None:
    """ceil(target / (capacity x max_utilization)): replicas that each take an equal share of the target rate and
    stay within max_utilization of their capacity (None when the capacity is 0)."""
    check_max_utilization(max_utilization)
    if capacity_rps <= 0:
        return None
    # a hair of tolerance so that target = k x capacity x F exactly (up to rounding) needs k, not k + 1
    return max(1, math.ceil(target_rps / (capacity_rps * max_utilization) - 1e-9))


def headroom(target_rps: float, replicas: int | None, capacity_rps: float) -> float | None:
    """1 - target / (replicas x capacity): the unused share of the deployment's capacity at the target rate."""
    if replicas is None or replicas <= 0 or capacity_rps <= 0:
        return None
    return 1.0 - target_rps / (replicas * capacity_rps)


def cost_per_hour(replicas: int | None, gpus_per_replica: int, price_per_gpu_hour: float | None) -> float | None:
    """replicas x GPUs per replica x the price of one GPU-hour (None when unpriced or unattainable)."""
    if replicas is None or price_per_gpu_hour is None:
        return None
    return replicas * gpus_per_replica * price_per_gpu_hour


def output_tokens_per_request(output_tokens: float, requests: int) -> float | None:
    """Output tokens generated per request of the trace (rejected requests count, with no tokens)."""
    if requests <= 0:
        return None
    return output_tokens / requests


def cost_per_million_output_tokens(
    cost_per_hour_usd: float | None, target_rps: float, tokens_per_request: float | None
) -> float | None:
    """cost per hour / (target x tokens per request x 3600) x 1e6 (None when unpriced or nothing is generated)."""
    if cost_per_hour_usd is None or tokens_per_request is None or tokens_per_request <= 0 or target_rps <= 0:
        return None
    return cost_per_hour_usd / (target_rps * tokens_per_request * SECONDS_PER_HOUR) * 1e6


def parse_prices(items: list[str] | None) -> dict[str, float]:
    """`--price GPU=DOLLARS_PER_HOUR` items -> {gpu name as given (lower case): price}; exits 2 on a bad one."""
    prices: dict[str, float] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise UserError(f"--price {item!r}: expected GPU=DOLLARS_PER_HOUR, e.g. h100-80gb=3.50")
        try:
            value = float(raw.strip().lstrip("$"))
        except ValueError:
            raise UserError(f"--price {item!r}: {raw.strip()!r} is not a number of dollars per GPU-hour") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--price {item!r}: the price must be a positive number of dollars per GPU-hour")
        if name.lower() in prices:
            raise UserError(f"--price gives a price for {name} twice")
        prices[name.lower()] = value
    return prices


def format_usd(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"${x:,.0f}"
    if x >= 1:
        return f"${x:,.2f}"
    return f"${x:.3g}"
