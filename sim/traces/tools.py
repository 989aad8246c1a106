"""What a trace looks like (`trace_stats`), and new traces cut from it (`slice_trace`) or sped up (`scale_trace`).

Definitions (used by `sim trace stats`):

- rows: requests in the trace (after a reader's deliberate skips, e.g. failed BurstGPT requests).
- duration: last arrival - first arrival, in seconds.
- arrival rate: (rows - 1) / duration, requests/s: the number of inter-arrival gaps over their total length (an
  unbiased estimate of a Poisson rate). Undefined (None) with fewer than 2 rows or a zero duration.
- burstiness: coefficient of variation of the inter-arrival times (population standard deviation / mean): 1 for
  Poisson arrivals, 0 for evenly spaced ones, above 1 for bursty ones. Undefined with fewer than 3 rows or a zero
  mean gap.
- percentiles: nearest rank -- p-th percentile is the smallest value v with at least p% of requests <= v (always a
  value of the trace); max is the largest. Computed for prompt, output and total (prompt + output) tokens.
- shareable prefix tokens: prompt tokens that a prefix cache could serve from an earlier request, taking requests in
  arrival order:
    * with prefix groups (columns prefix_group, prefix_tokens): for each request of a group after the group's first,
      min(its prefix_tokens, the largest prefix_tokens among the group's earlier requests);
    * with Mooncake hash ids: for each hashed block whose id appeared earlier (in an earlier request or earlier in
      the same request), the prompt tokens that block covers (block_hash_tokens, 512, or fewer for a prompt's last,
      partial block);
    * otherwise 0: the trace says nothing about prompt content.
  Also reported as a fraction of all prompt tokens.
"""

from __future__ import annotations

import math

import numpy as np

from sim.errors import UserError
from sim.traces.model import Trace

PERCENTILES = (50, 90, 99)


def _nearest_rank(values: np.ndarray, p: float) -> int:
    ordered = np.sort(values)
    rank = max(int(math.ceil(p / 100.0 * len(ordered))), 1)
    return int(ordered[rank - 1])


def length_summary(values: np.ndarray) -> dict:
    out = {"mean": float(values.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = _nearest_rank(values, p)
    out["max"] = int(values.max())
    return out


def shareable_prefix_tokens(trace: Trace) -> tuple[int, str]:
    """(tokens, source): see the module docstring. source is 'prefix groups', 'hash ids' or 'none'."""
    if "prefix_group" in trace.columns:
        group, tokens = trace.columns["prefix_group"], trace.columns["prefix_tokens"]
        total = 0
        for g in np.unique(group[group >= 0]):
            t = tokens[group == g]
            if len(t) > 1:
                earlier_max = np.maximum.accumulate(t)[:-1]
                total += int(np.minimum(t[1:], earlier_max).sum())
        return total, "prefix groups"
    if trace.block_hashes is not None and len(trace.block_hashes[0]):
        flat, offsets = trace.block_hashes
        per = trace.block_hash_tokens
        counts = offsets[1:] - offsets[:-1]
        row = np.repeat(np.arange(len(trace)), counts)
        position = np.arange(len(flat)) - offsets[:-1][row]
        covered = np.clip(trace.prompt_tokens[row] - position * per, 0, per)
        _, first = np.unique(flat, return_index=True)
        repeated = np.ones(len(flat), dtype=bool)
        repeated[first] = False
        return int(covered[repeated].sum()), "hash ids"
    return 0, "none"


def trace_stats(trace: Trace) -> dict:
    """The figures `sim trace stats` prints (definitions in the module docstring)."""
    rows = len(trace)
    if rows == 0:
        raise UserError(f"{trace.path}: the trace has no requests")
    duration = trace.duration_s
    gaps = np.diff(trace.arrival_s)
    rate = (rows - 1) / duration if rows >= 2 and duration > 0 else None
    cv = float(gaps.std() / gaps.mean()) if rows >= 3 and gaps.mean() > 0 else None
    total = trace.prompt_tokens + trace.output_tokens
    shared, source = shareable_prefix_tokens(trace)
    prompt_sum = int(trace.prompt_tokens.sum())
    out = {
        "trace": trace.path,
        "format": trace.format,
        "rows": rows,
        "skipped_rows": trace.skipped_rows,
        "first_arrival_s": float(trace.arrival_s[0]),
        "duration_s": duration,
        "arrival_rate_rps": rate,
        "burstiness_cv": cv,
        "prompt_tokens": length_summary(trace.prompt_tokens),
        "output_tokens": length_summary(trace.output_tokens),
        "total_tokens": length_summary(total),
        "prompt_tokens_sum": prompt_sum,
        "shareable_prefix_tokens": shared,
        "shareable_prefix_fraction": shared / prompt_sum,
        "shareable_prefix_source": source,
        "notes": list(trace.notes),
    }
    for name in ("n", "beam_width"):
        if name in trace.columns:
            out[f"{name}_mean"] = float(trace.columns[name].mean())
            out[f"{name}_max"] = int(trace.columns[name].max())
    if "prefix_group" in trace.columns:
        group = trace.columns["prefix_group"]
        out["prefix_groups"] = int(len(np.unique(group[group >= 0])))
        out["requests_in_prefix_groups"] = int((group >= 0).sum())
    return out


def _rate_text(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate:,.1f}" if rate >= 1 else f"{rate:.3g}"


def format_stats(s: dict) -> str:
    """The human-readable report of `trace_stats`."""
    lines = [f"trace: {s['trace']} ({s['format']})"]
    skipped = f" ({s['skipped_rows']:,} skipped)" if s["skipped_rows"] else ""
    lines.append(f"rows: {s['rows']:,}{skipped}")
    for note in s["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"duration: {s['duration_s']:,.1f} s (first to last arrival; first at {s['first_arrival_s']:,.3f} s)")
    lines.append(f"arrival rate: {_rate_text(s['arrival_rate_rps'])} requests/s  (= (rows - 1) / duration)")
    cv = "n/a" if s["burstiness_cv"] is None else f"{s['burstiness_cv']:.2f}"
    lines.append(f"burstiness: {cv}  (coefficient of variation of inter-arrival times; Poisson = 1)")
    lines.append("")
    lines.append(f"{'tokens':<8} {'mean':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for key, label in (("prompt_tokens", "prompt"), ("output_tokens", "output"), ("total_tokens", "total")):
        d = s[key]
        lines.append(f"{label:<8} {d['mean']:>9,.0f} {d['p50']:>8,} {d['p90']:>8,} {d['p99']:>8,} {d['max']:>8,}")
    lines.append("(percentiles by nearest rank; total = prompt + output)")
    lines.append("")
    for name in ("n", "beam_width"):
        if f"{name}_mean" in s:
            lines.append(f"{name}: mean {s[f'{name}_mean']:.2f}, max {s[f'{name}_max']}")
    if "prefix_groups" in s:
        lines.append(f"prefix groups: {s['prefix_groups']:,} ({s['requests_in_prefix_groups']:,} requests in a group)")
    source = s["shareable_prefix_source"]
    if source == "none":
        lines.append(
            "shareable prefix tokens: 0 (the trace has no prefix groups or hash ids, so nothing is known "
            "about shared prompt content)"
        )
    else:
        lines.append(
            f"shareable prefix tokens: {s['shareable_prefix_tokens']:,} of {s['prompt_tokens_sum']:,} prompt "
            f"tokens ({100 * s['shareable_prefix_fraction']:.1f}%, from {source})"
        )
    return "\n".join(lines)


def slice_trace(
    trace: Trace,
    start_s: float | None = None,
    end_s: float | None = None,
    first: int | None = None,
    skip: int = 0,
    rebase: bool = True,
) -> Trace:
    """The requests arriving in [start_s, end_s) -- seconds after the trace's first arrival -- then, of those,
    `skip` dropped and the next `first` kept. With `rebase`, times are shifted so that the window's start (start_s,
    or the first kept arrival when start_s is None) is 0; otherwise they are kept."""
    if len(trace) == 0:
        raise UserError(f"{trace.path}: the trace has no requests")
    for name, value in (("--start", start_s), ("--end", end_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{name} must be a number of seconds >= 0, got {value:g}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise UserError(f"--end ({end_s:g} s) must be after --start ({start_s:g} s)")
    if first is not None and first < 1:
        raise UserError(f"--first must be at least 1, got {first}")
    if skip < 0:
        raise UserError(f"--skip must not be negative, got {skip}")
    t0 = float(trace.arrival_s[0])
    relative = trace.arrival_s - t0
    lo = 0 if start_s is None else int(np.searchsorted(relative, start_s, side="left"))
    hi = len(trace) if end_s is None else int(np.searchsorted(relative, end_s, side="left"))
    lo = min(lo + skip, hi)
    if first is not None:
        hi = min(hi, lo + first)
    if hi <= lo:
        raise UserError(
            f"{trace.path}: no requests in the selection (the trace spans {trace.duration_s:,.3f} s "
            f"and has {len(trace):,} requests)"
        )
    out = trace.select(slice(lo, hi))
    if rebase:
        origin = t0 + start_s if start_s is not None else float(out.arrival_s[0])
        out.arrival_s = np.maximum(out.arrival_s - origin, 0.0)
    out.format = "native"
    return out


def scale_trace(trace: Trace, factor: float | None = None, rate: float | None = None) -> Trace:
    """Arrival rate multiplied by `factor` (or set to `rate`, requests/s as defined in trace_stats): the gaps
    between arrivals are divided by the factor, the first arrival stays where it is, lengths are unchanged."""
    if (factor is None) == (rate is None):
        raise UserError("give either --factor or --rate")
    if len(trace) < 2 or trace.duration_s <= 0:
        raise UserError(f"{trace.path}: scaling needs at least two requests at different times")
    if rate is not None:
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"--rate must be a positive number of requests/s, got {rate:g}")
        factor = rate / ((len(trace) - 1) / trace.duration_s)
    if not (math.isfinite(factor) and factor > 0):
        raise UserError(f"--factor must be a positive number, got {factor:g}")
    out = trace.select(slice(None))
    t0 = float(trace.arrival_s[0])
    out.arrival_s = t0 + (trace.arrival_s - t0) / factor
    out.format = "native"
    out.notes.append(f"arrival rate scaled by {factor:g}")
    return out


def tile_trace(trace: Trace, copies: int) -> Trace:
    """The trace `copies` times back to back, at its own rate: copy k arrives k x (duration + mean gap) seconds
    later, so the copies join with one mean gap and the whole has the trace's rate ((rows - 1) / duration). Rows,
    lengths, columns and prompt content repeat (a shared prefix of copy 1 is the same prefix in copy 2)."""
    if copies < 1:
        raise ValueError("copies must be at least 1")
    n = len(trace)
    if copies == 1 or n == 0:
        return trace
    tiled = trace.select(np.tile(np.arange(n), copies))
    gap = trace.duration_s / (n - 1) if n > 1 else 0.0
    period = trace.duration_s + gap
    tiled.arrival_s = tiled.arrival_s + np.repeat(np.arange(copies, dtype=np.float64) * period, n)
    tiled.notes = [*trace.notes, f"tiled {copies} times"]
    return tiled
