"""The figures of a cluster replay's summary.json: the cluster's, each replica's, and how evenly the router loaded
them. Each figure is defined here and in the README ("Clusters").

Cluster figures are those of `sim.records.summary.summarize` over every request and every replica's iterations, with:
    duration_s: from the first arrival to the end of the last iteration of any replica; throughput per second of it.
    iterations: summed over replicas; batch_size and kv_memory: over every iteration of every replica (kv_memory as a
        fraction of one replica's KV capacity).
    sharing.prefix_cache_hit_rate: hit tokens / prefill tokens, summed over the replicas.
load_imbalance (per pool): max / mean over its replicas of requests routed, tokens routed (prompt + output) and busy
    time (seconds of iterations); 1.0 is a perfect balance.
replicas: per replica, `summarize` over its iterations and the requests it served, with routed_requests,
    routed_tokens, busy_s and sharing (its prefix-cache hits).
kv_transfer (disaggregated): transfers, bytes, time_s (ready at the prefill replica -> arrived, queueing included)
    and queued_s (waiting behind earlier transfers on the same link), mean/p50/p99.
"""

from __future__ import annotations

import numpy as np

from sim.cluster.replica import Replica
from sim.cluster.run import ClusterRun
from sim.records.requests import RequestLog
from sim.records.steps import STEP_COLUMNS
from sim.records.summary import sharing_summary, summarize
from sim.serving.replay import summary_header


def _imbalance(values: list[float]) -> float | None:
    mean = float(np.mean(values)) if values else 0.0
    return float(max(values)) / mean if mean > 0 else None


def _replica_summary(
    replica: Replica, steps: dict[str, np.ndarray], log: RequestLog, rows: np.ndarray, capacity: int, start: float
) -> dict:
    scheduler = replica.scheduler
    return {
        "replica": replica.index,
        "routed_requests": replica.routed_requests,
        "routed_tokens": replica.routed_tokens,
        "busy_s": float(steps["duration_s"].sum()),
        **summarize(steps, log.select(rows), capacity, start),
        "sharing": sharing_summary(
            steps,
            getattr(replica.allocator, "num_cow_copies", 0),
            scheduler.prefill_tokens_requested,
            scheduler.prefill_tokens_cached,
        ),
    }


def _concat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([t[c] for t in tables]) if tables else np.empty(0) for c in STEP_COLUMNS}


def cluster_summary(run: ClusterRun) -> dict:
    """summary.json of a cluster replay (see the module docstring)."""
    trace, budget, options = run.trace, run.budget, run.options
    start = float(trace.arrival_s[0]) if len(trace) else 0.0
    capacity = budget.capacity_bytes
    steps = [replica.engine.steps.arrays() for replica in run.replicas]
    prefill_ids = (
        set() if run.prefill_replica_of is None else {r.index for r in run.replicas[: options.prefill_replicas]}
    )
    pools: dict[str, list[dict]] = {}
    for replica, table in zip(run.replicas, steps):
        prefill = replica.index in prefill_ids
        where = run.prefill_replica_of if prefill else run.replica_of
        log = run.prefill_requests if prefill else run.requests
        rows = np.flatnonzero(where == replica.index)
        figures = _replica_summary(replica, table, log, rows, capacity, start)
        pools.setdefault("prefill" if prefill else ("decode" if prefill_ids else "all"), []).append(figures)
    every = _concat(steps)
    figures = summarize(every, run.requests, capacity, start)
    ends = [float((t["time_s"] + t["duration_s"]).max()) for t in steps if len(t["time_s"])]
    duration = max(0.0, max(ends, default=start) - start)
    completed = ~np.isnan(run.requests.finish_s)
    out_tokens = int((run.requests.output_tokens[completed] * run.requests.num_seqs[completed]).sum())
    figures["duration_s"] = duration
    figures["throughput"] = {
        "requests_per_s": float(completed.sum()) / duration if duration > 0 else 0.0,
        "output_tokens_per_s": out_tokens / duration if duration > 0 else 0.0,
    }
    decode_pool = run.replicas[options.prefill_replicas :] if prefill_ids else run.replicas
    hits = sum(r.scheduler.prefill_tokens_cached for r in run.replicas)
    asked = sum(r.scheduler.prefill_tokens_requested for r in run.replicas)
    summary = {
        **summary_header(decode_pool[0].allocator, budget, options.replica, trace),
        "cluster": {
            "replicas": len(run.replicas),
            "prefill_replicas": options.prefill_replicas if prefill_ids else 0,
            "decode_replicas": options.decode_replicas if prefill_ids else 0,
            "routers": run.routers,
        },
        **figures,
        "sharing": sharing_summary(
            every, sum(getattr(r.allocator, "num_cow_copies", 0) for r in run.replicas), asked, hits
        ),
        "load_imbalance": {
            pool: {
                "requests": _imbalance([r["routed_requests"] for r in rows]),
                "tokens": _imbalance([r["routed_tokens"] for r in rows]),
                "busy_s": _imbalance([r["busy_s"] for r in rows]),
            }
            for pool, rows in pools.items()
        },
        "replicas": {pool: rows for pool, rows in pools.items()},
    }
    if run.transfers:
        summary["kv_transfer"] = run.transfers
    scheduler = decode_pool[0].scheduler
    summary["config"] = {
        "scheduler": scheduler.name,
        "tp": options.replica.tp,
        "max_num_seqs": scheduler.limits.max_num_seqs,
        "max_num_batched_tokens": scheduler.limits.max_num_batched_tokens,
        "max_model_len": options.replica.model.max_model_len,
        "kv_bytes_per_token": budget.bytes_per_token,
        "kv_budget_source": budget.source,
        "router_seed": options.router_seed,
        "cost_model": run.replicas[0].engine.cost_model.describe(),
    }
    return summary
