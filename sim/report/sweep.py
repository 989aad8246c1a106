"""`sim sweep SPEC.toml`: a grid of replays -> one results table (CSV or Parquet) and a report.

The spec (TOML; paths relative to the spec file's directory):

    name = "azure-13b"                      # optional: output directory runs/sweep-<name> by default
    traces = ["../traces/azure-llm-2023-conv.csv"]
    models = ["llama-2-13b"]                # presets or dimension strings, as --model
    gpus = ["a100-80gb"]
    allocators = ["paged", "contiguous-max"]
    block_sizes = [16]
    rates = [2, 4, 8]                       # req/s each trace is scaled to; "native" keeps its own rate
    replicas = [1, 4]                       # optional: replicas behind the router (a cluster: `sim cluster`)
    routers = ["round-robin", "prefix-aware"]  # optional: routers of the cells with several replicas
    slo = "ttft_p99=2s,tpot_p99=100ms"      # optional: adds slo_met, goodput_rps and one column per SLO
    first = 2000                            # optional: only each trace's first N requests
    duration = "600s"                       # optional: only requests arriving in each trace's first T
    table = "results.csv"                   # optional: results.csv (default) or results.parquet

    [options]                               # optional, for every cell (the replay options of `sim replay`)
    tp = 1
    max_num_seqs = 256
    max_num_batched_tokens = 4096
    kv_memory = "40GiB"
    gpu_memory_utilization = 0.9
    max_model_len = 4096
    address_space = "buddy"
    step_overhead = "2ms"
    sharing = true
    beam_replace_prob = 0.3
    seed = 0
    cost_model = "profile.json"             # a calibration profile (`sim calibrate`), relative to the spec
    host_kv_memory = "64GiB"                # a host tier for the paged allocators' cells (and host_link,
    preemption = "swap"                     # preemption), as sim replay's --host-kv-memory, --host-link, --preemption

Option values are checked by type and range (`tp = 1.7`, `sharing = "no"`, `max_num_batched_tokens = "4096"` are
refused). The table's `trace` column is the path as the spec gives it (relative to the spec), so the same spec gives
the same table from any directory.

The grid is the product traces x models x gpus x allocators x block_sizes x rates x replicas x routers, in that order
(the table's row order). Each cell is one replay (one replica) or one cluster replay (deterministic: the same cell gives
the same row on any machine). A finished cell is written at once to `<out>/cells/<key>.json`, where key is a hash of
everything the cell depends on (the trace file's bytes and selection, model and GPU figures, allocator, block size,
rate, options, the cost profile's bytes, SLOs, and the kvsim version); a rerun with the same output directory loads
finished cells instead of recomputing them, so an interrupted sweep resumes where it stopped (a cell file of another
shape is recomputed). The table and report are written (atomically) from the cells once all are done.

Cells run on local processes (`jobs`, default one per core), or with `ray=True` as Ray tasks (one CPU each) on a
local Ray instance or the cluster at `ray_address`; the rows, and so the table, are the same either way. Ray is an
optional extra (`pip install 'kvsim[ray]'`); its workers must be able to import `sim` (kvsim installed).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

import numpy as np

from sim.allocators.base import MEMORY_CATEGORIES
from sim.errors import UserError
from sim.progress import StatusLine
from sim.records.io import atomic_write
from sim.report.build import default_jobs
from sim.report.capacity import trace_rate
from sim.report.slo import good_requests, meets, parse_slos, per_request_latency, slo_values
from sim.report.sweep_spec import (
    Cell,
    SweepSpec,
    cell_options,
    cells_of,
)
from sim.serving.replay import replay
from sim.traces.model import Trace
from sim.traces.readers import read_trace
from sim.traces.tools import scale_trace, slice_trace
from sim.workers import stop_pool, worker_pool


def load_trace(spec: SweepSpec, path: str) -> Trace:
    trace = read_trace(spec.trace_file(path))
    if spec.first is not None or spec.duration_s is not None:
        trace = slice_trace(trace, end_s=spec.duration_s, first=spec.first)
    return trace


# Figures every row has (besides the cell's names and the SLO columns); a cached row without them is recomputed.
ROW_FIGURES = ("rate_rps", "requests", "completed", "throughput_rps", "batch_mean", "kv_blocks", "tp")


def _stat_columns(prefix: str, stats: dict) -> dict:
    return {f"{prefix}_{k}_s": stats[k] for k in ("mean", "p50", "p90", "p99")}


def run_cell(spec: SweepSpec, cell: Cell, trace: Trace) -> dict:
    """One replay; the table's row for it (plain JSON values; no timings, so rows are reproducible)."""
    options = cell_options(spec, cell)
    native = trace_rate(trace)
    rate = native if cell.rate == "native" else float(cell.rate)
    scaled = trace if cell.rate == "native" else scale_trace(trace, rate=rate)
    if cell.replicas == 1:
        result = replay(scaled, options)
        s, requests = result.summary, result.requests
        imbalance = 1.0
    else:
        from sim.cluster.run import ClusterOptions, simulate_cluster
        from sim.cluster.summary import cluster_summary

        run = simulate_cluster(scaled, ClusterOptions(options, cell.replicas, cell.router, options.seed))
        s, requests = cluster_summary(run), run.requests
        imbalance = s["load_imbalance"]["all"]["requests"]
    row = {
        "trace": cell.trace,
        "model": cell.model,
        "gpu": cell.gpu,
        "allocator": cell.allocator,
        "block_size": cell.block_size,
        "replicas": cell.replicas,
        "router": cell.router,
        "rate_rps": rate,
        "factor": rate / native,
        "requests": s["requests"]["total"],
        "completed": s["requests"]["completed"],
        "rejected": s["requests"]["rejected"],
        "preemptions": s["requests"]["preemptions"],
        "iterations": s["iterations"],
        "duration_s": s["duration_s"],
        "throughput_rps": s["throughput"]["requests_per_s"],
        "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
        "batch_mean": s["batch_size"]["mean"],
        "batch_max": s["batch_size"]["max"],
        **{f"kv_{c}": s["kv_memory"][c] for c in MEMORY_CATEGORIES},
        **_stat_columns("ttft", s["latency_s"]["ttft"]),
        **_stat_columns("tpot", s["latency_s"]["tpot"]),
        **_stat_columns("e2e", s["latency_s"]["e2e"]),
        "kv_blocks": s["kv_blocks"],
        "kv_capacity_tokens": s["kv_capacity_tokens"],
        "tp": options.tp,
        "prefix_cache_hit_rate": s["sharing"]["prefix_cache_hit_rate"],
        "load_imbalance": imbalance,
    }
    if spec.slo:
        slos = parse_slos(spec.slo)
        latency = per_request_latency(requests)
        completed = ~np.isnan(requests.finish_s)
        values = slo_values(slos, latency)
        good = good_requests(slos, latency, completed)
        row["slo_met"] = meets(slos, values, int(completed.sum()))
        row["goodput_rps"] = float(good.sum()) / s["duration_s"] if s["duration_s"] > 0 else 0.0
        for name, v in values.items():
            row[f"slo_{name}_s"] = v
    return {
        k: (float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else v)
        for k, v in row.items()
    }


# --- running -----------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(spec: SweepSpec, traces: dict[str, Trace]) -> None:
    _WORKER["spec"] = spec
    _WORKER["traces"] = traces


def _cell_in_worker(cell: Cell) -> tuple[Cell, dict]:
    return cell, run_cell(_WORKER["spec"], cell, _WORKER["traces"][cell.trace])


def _ray_cell(spec: SweepSpec, cell: Cell, trace: Trace) -> tuple[Cell, dict]:
    return cell, run_cell(spec, cell, trace)


def cell_path(out: str, cell: Cell) -> str:
    return os.path.join(out, "cells", f"{cell.key}.json")


def load_finished(out: str, cells: list[Cell]) -> dict[int, dict]:
    done = {}
    for c in cells:
        p = cell_path(out, c)
        if os.path.exists(p):
            try:
                with open(p, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue  # a damaged cell file is recomputed
            if isinstance(data, dict) and data.get("key") == c.key and _row_fits(data.get("row"), c):
                done[c.index] = data["row"]
    return done


def _row_fits(row, cell: Cell) -> bool:
    """Whether a cell file's row is one this cell would write: a table of plain values that names the cell. A file
    of any other shape (edited, truncated, written by another version) is recomputed, never put in the table."""
    if not isinstance(row, dict) or not row:
        return False
    if any(not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))) for k, v in row.items()):
        return False
    names = {
        "trace": cell.trace,
        "model": cell.model,
        "gpu": cell.gpu,
        "allocator": cell.allocator,
        "block_size": cell.block_size,
        "replicas": cell.replicas,
        "router": cell.router,
    }
    return all(row.get(k) == v for k, v in names.items()) and all(k in row for k in ROW_FIGURES)


def _save_cell(out: str, cell: Cell, row: dict, wall_s: float | None) -> None:
    atomic_write(
        cell_path(out, cell),
        json.dumps({"key": cell.key, "index": cell.index, "row": row, "wall_s": wall_s}, indent=1) + "\n",
    )


@dataclass
class SweepRun:
    spec: SweepSpec
    out: str
    cells: list[Cell]
    rows: list[dict]
    resumed: int
    computed: int
    wall_s: float
    engine: str  # "local processes (N)" or "ray (address)"


def run_sweep(
    spec: SweepSpec,
    out: str,
    jobs: int | None = None,
    use_ray: bool = False,
    ray_address: str | None = None,
    status: StatusLine | None = None,
    fresh: bool = False,
) -> SweepRun:
    t0 = time.perf_counter()
    cells = cells_of(spec)
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    finished = {} if fresh else load_finished(out, cells)
    resumed = len(finished)
    todo = [c for c in cells if c.index not in finished]
    traces = {t: load_trace(spec, t) for t in spec.traces} if todo else {}
    jobs = jobs or default_jobs()
    total = len(cells)

    def show(force: bool = False) -> None:
        if status is not None:
            status.bar("sweep", len(finished), total, f"cells ({resumed} resumed)", force)

    def take(cell: Cell, row: dict) -> None:
        finished[cell.index] = row
        _save_cell(out, cell, row, None)
        show(force=True)

    show(force=True)
    if not todo:
        engine = "none (all cells resumed)"
    elif use_ray:
        engine = _run_ray(spec, todo, traces, ray_address, jobs, take)
    elif jobs <= 1:
        engine = "this process"
        for c in todo:
            take(c, run_cell(spec, c, traces[c.trace]))
    else:
        engine = f"{min(jobs, len(todo))} local processes"
        pool = worker_pool(min(jobs, len(todo)), _init_worker, (spec, traces))
        pending: set = set()
        try:  # submitting and reaping too: a signal at any moment stops every worker
            for c in todo:
                pending.add(pool.submit(_cell_in_worker, c))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    take(*fut.result())
            pool.shutdown()
        except BaseException:  # Ctrl-C, SIGTERM or a failed cell: no worker outlives this
            stop_pool(pool, pending)
            raise
    if status is not None:
        status.close()
    rows = [finished[c.index] for c in cells]
    return SweepRun(spec, out, cells, rows, resumed, len(todo), time.perf_counter() - t0, engine)


def _run_ray(spec: SweepSpec, todo: list[Cell], traces: dict[str, Trace], address: str | None, jobs: int, take) -> str:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'kvsim[ray]' (or pip install 'ray>=2.9')") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=jobs, **kwargs)
    try:
        remote = ray.remote(num_cpus=1)(_ray_cell)
        spec_ref = ray.put(spec)
        refs = {t: ray.put(tr) for t, tr in traces.items()}
        pending = [remote.remote(spec_ref, c, refs[c.trace]) for c in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                take(*ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()
    return f"ray ({address or f'local instance, {jobs} CPUs'})"


# --- the table ---------------------------------------------------------------------------------------------------
def table_text(rows: list[dict]) -> str:
    from sim.report.html import rows_to_csv

    return rows_to_csv(rows)


def write_table(run: SweepRun) -> str:
    path = os.path.join(run.out, run.spec.table)
    if path.endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(
                'a .parquet table needs pyarrow (pip install pyarrow); or use table = "results.csv"'
            ) from None
        tmp = path + ".tmp"
        pq.write_table(pa.Table.from_pylist(run.rows), tmp)
        os.replace(tmp, path)
    else:
        atomic_write(path, table_text(run.rows))
    return path
