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

ITL, from the records. In kvsim a request emits one token (per sequence) at the end of each iteration that
computes the last token of its prompt and of every later iteration it is scheduled in; a partial prefill chunk emits
nothing. So a request's output tokens come at iteration ends, the first at first_token_s and the last at finish_s,
and its ITLs are the differences between the ends of the consecutive iterations it emitted in:

- a request that ran in every iteration of its span (neither preempted nor passed over by the token budget): the gaps
  between consecutive iteration ends of its span. Computed without per-request lists: a coverage count per iteration
  (a difference array over the spans) gives how many requests have each gap, and the statistics are those of this
  weighted set (mean, std and numpy's linear-interpolation percentiles, exact, in O(iterations + requests) memory);
- a request that paused: the engine records each pause (`RequestLog.pauses`: the end of the iteration it last
  emitted in before being preempted or passed over, and the end of the one it next emitted in, from the
  scheduler's `Batch.resumed`); its gaps are those of its span outside the pauses, plus one gap per pause. Exact too;
- a request whose pauses do not account for its token count (a request of several sequences that a preemption
  restarted from its prompt) is modelled: one interruption at the first iteration of its span with a preemption.
  Its mean gap is still exact (the sum of its gaps is finish - first token).

`kvsim.itl` in the output counts the exact requests (and how many of them paused) and the modelled ones.
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
    requests whose gaps are exact and of those modelled (see the module docstring)."""
    n_steps = len(steps.get("time_s", ()))
    done = ~np.isnan(requests.finish_s) & ~np.isnan(requests.first_token_s) & (requests.output_tokens >= 2)
    info = {"requests": int(done.sum()), "exact_requests": 0, "paused_requests": 0, "modelled_requests": 0}
    if n_steps == 0 or not done.any():
        return np.zeros(0), np.zeros(0, dtype=np.int64), info
    ends = np.asarray(steps["time_s"], dtype=np.float64) + np.asarray(steps["duration_s"], dtype=np.float64)
    gaps = np.empty(n_steps)
    gaps[0] = 0.0  # never used: a gap ends at an iteration after some request's first token
    gaps[1:] = np.diff(ends)
    index = np.nonzero(done)[0]
    f = _nearest(ends, requests.first_token_s[done])
    last = _nearest(ends, requests.finish_s[done])
    a, b = f + 1, last + 1  # the request may emit again at iterations in [a, b)
    need = requests.output_tokens[done].astype(np.int64) - 1
    cover = np.zeros(n_steps + 1, dtype=np.int64)
    merged: list[float] = []
    plain = (b - a) == need
    paused = np.isin(index, np.fromiter(requests.pauses, dtype=np.int64, count=len(requests.pauses)))
    # requests that ran in every iteration of their span: every gap between consecutive iteration ends is theirs
    ok = plain & ~paused
    np.add.at(cover, a[ok], 1)
    np.add.at(cover, b[ok], -1)
    info["exact_requests"] = int(ok.sum())
    modelled = []
    for j in np.nonzero(~ok)[0]:
        pauses = requests.pauses.get(int(index[j]), [])
        if pauses:
            # each pause (t0, t1): it emitted at the end of iteration p and next at the end of q, none in between
            pq = [(int(_nearest(ends, np.array([t0]))[0]), int(_nearest(ends, np.array([t1]))[0])) for t0, t1 in pauses]
            if (b[j] - a[j]) - sum(q - p - 1 for p, q in pq) == need[j]:
                cover[a[j]] += 1
                cover[b[j]] -= 1
                for p, q in pq:
                    cover[p + 1] -= 1
                    cover[q + 1] += 1
                    merged.append(ends[q] - ends[p])
                info["exact_requests"] += 1
                info["paused_requests"] += 1
                continue
        modelled.append(j)
    info["modelled_requests"] = len(modelled)
    if modelled:
        _model_interruptions(np.array(modelled), a, b, need, ends, steps, n_steps, cover, merged)
    counts = np.cumsum(cover)[:n_steps]
    values = np.concatenate([gaps, np.array(merged, dtype=np.float64)])
    weights = np.concatenate([counts, np.ones(len(merged), dtype=np.int64)])
    return values, weights, info


def _model_interruptions(js, a, b, need, ends, steps, n_steps, cover, merged) -> None:
    """Requests whose records do not give their pauses (none recorded, or not matching their token count; a request
    of several sequences restarted from its prompt): one interruption of the iterations they sat out, placed at the
    first iteration of their span with a preemption (at its start when there is none)."""
    aj, bj = a[js], b[js]
    mj = np.maximum((bj - aj) - need[js], 0)
    p = aj.copy()
    marked = np.nonzero(np.asarray(steps.get("preempted", np.zeros(n_steps))) > 0)[0]
    if len(marked):
        k = np.searchsorted(marked, aj)
        cand = marked[np.minimum(k, len(marked) - 1)]
        fits = (k < len(marked)) & (cand <= bj - 1 - mj)
        p = np.where(fits, cand, aj)
    np.add.at(cover, aj, 1)
    np.add.at(cover, p, -1)
    np.add.at(cover, p + mj + 1, 1)
    np.add.at(cover, bj, -1)
    merged += (ends[p + mj] - ends[p - 1]).tolist()


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
