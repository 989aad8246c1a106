"""The figures of summary.json, each defined here (and in the README's table) and computed from the records."""

from __future__ import annotations

import numpy as np

from sim.allocators.base import MEMORY_CATEGORIES
from sim.records.requests import RequestLog
from sim.records.steps import GROUP_CATEGORIES


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {
        "mean": float(np.mean(values)),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
    }


def sharing_summary(
    steps: dict[str, np.ndarray], cow_copies: int, prefill_tokens_requested: int, prefill_tokens_cached: int
) -> dict:
    """The `sharing` figures.

    saved_fraction: 1 - (KV bytes held, summed over iterations) / (KV bytes the same live sequences would hold with
        nothing shared, summed over iterations) — i.e. the share of memory that sharing saves against the
        `--no-sharing` counterfactual of the same sequences at the same instants (0 when nothing is shared).
    cow_copies: blocks copied because a shared, partly filled block was written (copy-on-write).
    prefix_cache_hit_tokens: prompt tokens whose KV was found in memory at admission (not prefilled).
    prefix_cache_hit_rate: hit tokens / tokens of every admission's prefill (recomputes included).
    """
    held = sum(float(steps[f"{c}_bytes"].sum()) for c in ("token_states", "reserved", "internal_fragmentation"))
    unshared = float(steps["unshared_bytes"].sum())
    return {
        "saved_fraction": 1.0 - held / unshared if unshared > 0 else 0.0,
        "cow_copies": int(cow_copies),
        "prefix_cache_hit_tokens": int(prefill_tokens_cached),
        "prefix_cache_hit_rate": prefill_tokens_cached / prefill_tokens_requested if prefill_tokens_requested else 0.0,
    }


def summarize(steps: dict[str, np.ndarray], requests: RequestLog, capacity_bytes: int, start_s: float) -> dict:
    """The figures of summary.json (see README, 'Output figures').

    duration_s: from the first arrival to the end of the last iteration.
    throughput: completed requests, and the output tokens they generated (output tokens x sequences per request),
        per second of duration.
    batch_size: sequences per iteration (prefill + decode), mean over iterations and max.
    kv_memory: each category's fraction of KV capacity, averaged over iterations (unweighted).
    latency_s: over completed requests; ttft = first token - arrival; e2e = finish - arrival;
        tpot = (finish - first token) / (output tokens - 1), over requests with at least 2 output tokens.
    """
    completed = ~np.isnan(requests.finish_s)
    rejected = sum(r is not None for r in requests.rejection)
    n_steps = len(steps["time_s"])
    end = float(steps["time_s"][-1] + steps["duration_s"][-1]) if n_steps else start_s
    duration = max(0.0, end - start_s)
    out_tokens = int((requests.output_tokens[completed] * requests.num_seqs[completed]).sum())
    if n_steps:
        kv = {c: float(np.mean(steps[f"{c}_bytes"]) / capacity_bytes) for c in MEMORY_CATEGORIES}
        batch = {"mean": float(np.mean(steps["running"])), "max": int(np.max(steps["running"]))}
    else:
        kv = {c: (1.0 if c == "free" else 0.0) for c in MEMORY_CATEGORIES}
        batch = {"mean": 0.0, "max": 0}
    ttft = requests.first_token_s[completed] - requests.arrival_s[completed]
    e2e = requests.finish_s[completed] - requests.arrival_s[completed]
    multi = completed & (requests.output_tokens > 1)
    tpot = (requests.finish_s[multi] - requests.first_token_s[multi]) / (requests.output_tokens[multi] - 1)
    return {
        "requests": {
            "total": len(requests.arrival_s),
            "completed": int(completed.sum()),
            "rejected": rejected,
            "preemptions": int(requests.preemptions.sum()),
        },
        "iterations": n_steps,
        "duration_s": duration,
        "throughput": {
            "requests_per_s": float(completed.sum()) / duration if duration > 0 else 0.0,
            "output_tokens_per_s": out_tokens / duration if duration > 0 else 0.0,
        },
        "batch_size": batch,
        "kv_memory": kv,
        "latency_s": {"ttft": _stats(ttft), "tpot": _stats(tpot), "e2e": _stats(e2e)},
    }


def kv_groups_summary(steps: dict[str, np.ndarray], groups, tp: int, capacity_bytes: int) -> list[dict]:
    """The `kv_groups` figures of a run whose allocator takes the model's KV-cache groups, one entry per group in
    the allocator's order (steps.csv's g0_, g1_, ... columns; `sim.hardware.kv_groups.KVGroup` for the layout).

    kind: "full", "sliding_window" or "mla"; window: the sliding window in tokens (null for the other kinds).
    layers: the model's layer indices in the group (0-based); num_layers: how many.
    bytes_per_token: KV bytes one token takes in all the group's layers on one GPU (tp GPUs; MLA's latent is held
        whole by every GPU); bytes_per_token_per_layer: the same for one layer.
    kv_memory: per category of GROUP_CATEGORIES, the group's bytes (steps.csv's g<i>_<category>_bytes) as a fraction
        of the KV capacity (kv_capacity_bytes, the whole pool), averaged over iterations (unweighted), as the
        top-level kv_memory. token_states, reserved and internal_fragmentation sum over the groups to the top-level
        figures (free memory belongs to the pool, not to a group). window_freed: the capacity a full-attention layout
        would also hold for the live sequences at the positions the window let go (0 for full and MLA groups); it is
        not part of the capacity's breakdown and may exceed 1 where full attention would not have fitted.
    """
    n_steps = len(steps["time_s"])
    out = []
    for i, g in enumerate(groups):
        kv = {
            c: (float(np.mean(steps[f"g{i}_{c}_bytes"]) / capacity_bytes) if n_steps else 0.0) for c in GROUP_CATEGORIES
        }
        out.append(
            {
                "kind": g.kind,
                "window": g.window,
                "layers": list(g.layers),
                "num_layers": g.num_layers,
                "bytes_per_token": g.bytes_per_token(tp),
                "bytes_per_token_per_layer": g.bytes_per_token_per_layer(tp),
                "kv_memory": kv,
            }
        )
    return out
