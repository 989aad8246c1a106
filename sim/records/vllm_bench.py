"""The figures of `vllm bench serve`, computed from a replay's records and written as vllm-bench.json.

Keys, units and formulas follow vLLM's benchmark client (`vllm/benchmarks/serve.py`, `calculate_metrics` and the
result dict of `benchmark`, read at vllm-project/vllm commit 009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1):

- completed: finished requests; failed: our rejected requests (vLLM: requests whose HTTP call failed).
- duration (s): from the first arrival to the end of the last iteration (vLLM: from the benchmark's start, just
  before it sends the first request, until the last response ended).
- total_input_tokens, total_output_tokens: prompt tokens and output tokens (x sequences per request) of the completed
  requests; request_throughput (req/s), output_throughput and total_token_throughput (tok/s): those per second of
  duration.
- ttft_ms = first token - arrival; e2el_ms = finish - arrival; tpot_ms = (e2el - ttft) / (output tokens - 1) over the
  completed requests with at least 2 output tokens; itl_ms: every gap between two consecutive output tokens of a
  request, pooled over all completed requests (as vLLM's `itls += output.itl`). Each has mean_, median_, std_
  (population, numpy's default) and p<P>_ for each percentile P (vLLM's default `--metric-percentiles` is "99"),
  numpy's linear-interpolation percentiles, in milliseconds. An empty set gives 0, as vLLM's `np.mean(x or 0)`.
- request_goodput (req/s): completed requests within every SLO given (`ttft`, `tpot`, `e2el` in ms; a request with
  one output token counts a TPOT of 0), per second of duration; only when SLOs are given. `sim replay` has no SLO
  options, so its vllm-bench.json has no request_goodput; `sim validate-external --goodput` passes them.

ITL, exactly from the records. In kvsim a request emits one token (per sequence) at the end of each iteration that
computes the last token of its prompt and of every later iteration it is scheduled in; a partial prefill chunk emits
nothing. So a request's output tokens come at the ends of iterations, the first at first_token_s and the last at
finish_s, and its ITLs are the differences between the ends of the consecutive iterations it emitted in. Let
e_0 < e_1 < ... be the iteration ends of the step log and a request's first token end e_f, its finish e_l
(located in the step log, nearest end). Its span holds k = l - f later iterations and it emitted in o - 1 of them
(o = output tokens):

- k == o - 1 (it ran in every iteration of its span: the rule for every request that was neither preempted nor left
  out of an iteration by the token budget): its ITLs are exactly e_j - e_{j-1} for f < j <= l. This is computed
  without per-request lists: a coverage count per iteration (a difference array over the spans) gives how many
  requests have the gap e_j - e_{j-1}, and the statistics are those of this weighted set of gaps -- the mean, std and
  numpy's linear-interpolation percentiles are exact, from O(iterations + requests) memory.
- k > o - 1 (interrupted: preempted and recomputed, or skipped when the budget ran out): it sat out m = k - (o - 1)
  iterations of its span. The step log does not say which; the records imply one interruption of m iterations
  (a preemption: preempted at iteration p, recomputed, emitting again at the end of p + m), placed at the first
  iteration of its span whose `preempted` count is non-zero (at its start when there is none). Its gaps are then the
  single gap e_{p+m} - e_{p-1} and the ordinary gaps elsewhere in its span. The sum of its gaps, finish - first
  token, is exact, so the mean ITL is always exact; for a request preempted once in a span where no other request
  was preempted, every gap is exact. `kvsim.itl` in the output counts exact and interrupted requests.
"""

from __future__ import annotations

import math

import numpy as np

from sim.records.requests import RequestLog

# vLLM's `--metric-percentiles` default ("99").
DEFAULT_PERCENTILES: tuple[float, ...] = (99.0,)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
COUNT_KEYS = ("completed", "failed", "total_input_tokens", "total_output_tokens")
RATE_KEYS = ("request_throughput", "output_throughput", "total_token_throughput")
GOODPUT_SLOS = ("ttft", "tpot", "e2el")
MS = 1000.0


def percentile_word(p: float) -> str:
    """The key fragment vLLM writes for a percentile: 99 -> '99', 99.9 -> '99.9'."""
    return str(int(p)) if int(p) == p else str(p)


def metric_keys(percentiles=DEFAULT_PERCENTILES, goodput: bool = False) -> list[str]:
    """The keys of vllm-bench.json (besides `kvsim`), in vLLM's order."""
    keys = ["duration", *COUNT_KEYS, "request_throughput"]
    if goodput:
        keys.append("request_goodput")
    keys += ["output_throughput", "total_token_throughput"]
    for m in LATENCY_METRICS:
        keys += [f"mean_{m}_ms", f"median_{m}_ms", f"std_{m}_ms"]
        keys += [f"p{percentile_word(p)}_{m}_ms" for p in percentiles]
    return keys


def _weighted_stats(values: np.ndarray, counts: np.ndarray, percentiles) -> dict[str, float]:
    """mean, median, std (population) and numpy's linear percentiles of the multiset holding values[i] counts[i]
    times -- without expanding it."""
    keep = counts > 0
    values, counts = values[keep].astype(np.float64), counts[keep].astype(np.int64)
    n = int(counts.sum())
    if n == 0:
        return {"mean": 0.0, "median": 0.0, "std": 0.0, **{p: 0.0 for p in percentiles}}
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    mean = float(np.dot(values, counts) / n)
    std = float(math.sqrt(max(0.0, float(np.dot((values - mean) ** 2, counts)) / n)))
    last = np.cumsum(counts) - 1  # index of the last copy of each value in the expanded sorted array

    def at(rank: np.ndarray) -> np.ndarray:
        return values[np.searchsorted(last, rank, side="left")]

    def pct(q: float) -> float:
        h = (n - 1) * q / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        x_lo, x_hi = at(np.array([lo, hi]))
        return float(x_lo + (h - lo) * (x_hi - x_lo))

    return {"mean": mean, "median": pct(50.0), "std": std, **{p: pct(float(p)) for p in percentiles}}


def _plain_stats(values: np.ndarray, percentiles) -> dict[str, float]:
    return _weighted_stats(np.asarray(values, dtype=np.float64), np.ones(len(values), dtype=np.int64), percentiles)


def _nearest(ends: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the iteration end nearest each time (the times are iteration ends; nearest guards a last-bit
    difference)."""
    i = np.clip(np.searchsorted(ends, times), 1, max(len(ends) - 1, 1))
    left = np.clip(i - 1, 0, len(ends) - 1)
    right = np.clip(i, 0, len(ends) - 1)
    return np.where(np.abs(ends[left] - times) <= np.abs(ends[right] - times), left, right)


def itl_gaps(steps: dict[str, np.ndarray], requests: RequestLog) -> tuple[np.ndarray, np.ndarray, dict]:
    """The pooled ITLs (seconds) of the completed requests as a weighted set: (values, counts), plus counts of the
    requests whose gaps are exact and of those interrupted (see the module docstring)."""
    n_steps = len(steps.get("time_s", ()))
    done = ~np.isnan(requests.finish_s) & ~np.isnan(requests.first_token_s) & (requests.output_tokens >= 2)
    info = {"requests": int(done.sum()), "exact_requests": 0, "interrupted_requests": 0}
    if n_steps == 0 or not done.any():
        return np.zeros(0), np.zeros(0, dtype=np.int64), info
    ends = np.asarray(steps["time_s"], dtype=np.float64) + np.asarray(steps["duration_s"], dtype=np.float64)
    gaps = np.empty(n_steps)
    gaps[0] = 0.0  # never used: a gap ends at an iteration after some request's first token
    gaps[1:] = np.diff(ends)
    f = _nearest(ends, requests.first_token_s[done])
    last = _nearest(ends, requests.finish_s[done])
    a, b = f + 1, last + 1  # the request emits again at iterations in [a, b)
    k = b - a
    need = requests.output_tokens[done].astype(np.int64) - 1
    m = np.maximum(k - need, 0)  # iterations of the span it sat out
    interrupted = m > 0
    info["exact_requests"] = int((~interrupted).sum())
    info["interrupted_requests"] = int(interrupted.sum())
    # where an interrupted request's sat-out iterations start: the first iteration of its span with a preemption
    # whose window still fits in the span, else its first
    p = a.copy()
    if interrupted.any():
        marked = np.nonzero(np.asarray(steps.get("preempted", np.zeros(n_steps))) > 0)[0]
        ai, mi, bi = a[interrupted], m[interrupted], b[interrupted]
        if len(marked):
            j = np.searchsorted(marked, ai)
            cand = marked[np.minimum(j, len(marked) - 1)]
            ok = (j < len(marked)) & (cand <= bi - 1 - mi)
            p[interrupted] = np.where(ok, cand, ai)
    # coverage: exact spans [a, b); interrupted ones [a, p) and [p + m + 1, b) plus one merged gap each
    cover = np.zeros(n_steps + 1, dtype=np.int64)
    ua, ub = a[~interrupted], b[~interrupted]
    np.add.at(cover, ua, 1)
    np.add.at(cover, ub, -1)
    ia, ib, ip, im = a[interrupted], b[interrupted], p[interrupted], m[interrupted]
    np.add.at(cover, ia, 1)
    np.add.at(cover, ip, -1)
    np.add.at(cover, ip + im + 1, 1)
    np.add.at(cover, ib, -1)
    counts = np.cumsum(cover)[:n_steps]
    merged = ends[ip + im] - ends[ip - 1]
    values = np.concatenate([gaps, merged])
    weights = np.concatenate([counts, np.ones(len(merged), dtype=np.int64)])
    return values, weights, info


def vllm_bench_metrics(
    steps: dict[str, np.ndarray],
    requests: RequestLog,
    duration_s: float,
    percentiles=DEFAULT_PERCENTILES,
    goodput: dict[str, float] | None = None,
) -> dict:
    """vllm-bench.json's figures (vLLM's keys and units) from a replay's step log and request log; `goodput` maps
    SLO names (ttft, tpot, e2el) to milliseconds."""
    completed = ~np.isnan(requests.finish_s)
    n_done = int(completed.sum())
    rejected = sum(r is not None for r in requests.rejection)
    total_in = int(requests.prompt_tokens[completed].sum())
    total_out = int((requests.output_tokens[completed] * requests.num_seqs[completed]).sum())
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)
    out: dict = {
        "duration": float(duration_s),
        "completed": n_done,
        "failed": int(rejected),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(n_done),
    }
    arrival = requests.arrival_s[completed]
    ttft = requests.first_token_s[completed] - arrival
    e2el = requests.finish_s[completed] - arrival
    outs = requests.output_tokens[completed]
    multi = outs > 1
    tpot_all = np.zeros(n_done)
    tpot_all[multi] = (e2el[multi] - ttft[multi]) / (outs[multi] - 1)
    if goodput:
        good = np.ones(n_done, dtype=bool)
        for name, values in (("ttft", ttft), ("tpot", tpot_all), ("e2el", e2el)):
            if name in goodput:
                good &= values <= goodput[name] / MS
        out["request_goodput"] = per_s(int(good.sum()))
    out["output_throughput"] = per_s(total_out)
    out["total_token_throughput"] = per_s(total_in + total_out)
    itl_values, itl_counts, itl_info = itl_gaps(steps, requests)
    stats = {
        "ttft": _plain_stats(ttft, percentiles),
        "tpot": _plain_stats(tpot_all[multi], percentiles),
        "itl": _weighted_stats(itl_values, itl_counts, percentiles),
        "e2el": _plain_stats(e2el, percentiles),
    }
    for m in LATENCY_METRICS:
        s = stats[m]
        out[f"mean_{m}_ms"] = s["mean"] * MS
        out[f"median_{m}_ms"] = s["median"] * MS
        out[f"std_{m}_ms"] = s["std"] * MS
        for p in percentiles:
            out[f"p{percentile_word(p)}_{m}_ms"] = s[p] * MS
    out["kvsim"] = {
        "itl": {
            **itl_info,
            "gaps": int(itl_counts.sum()),
            "method": "gaps between the ends of the iterations each request emitted in (sim.records.vllm_bench)",
        },
        "percentiles": [float(p) for p in percentiles],
        "goodput_slos_ms": dict(goodput) if goodput else None,
    }
    return out


def vllm_bench_json(summary: dict, steps: dict[str, np.ndarray], requests: RequestLog, **kwargs) -> dict:
    """vllm-bench.json of a replay: the figures of `vllm_bench_metrics` over the summary's duration."""
    return vllm_bench_metrics(steps, requests, float(summary.get("duration_s", 0.0)), **kwargs)
