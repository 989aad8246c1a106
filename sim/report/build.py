"""A capacity-planning report's computation: one capacity search per configuration (GPU x allocator x block size),
run in parallel on local processes, then the replicas, GPUs and cost each needs for the target rate, and the
recommendation.

Replicas and GPUs: a replica is one serving engine (tp GPUs with tensor parallelism). The target traffic is assumed
to split evenly over replicas, each seeing the trace's arrival pattern at target / replicas requests/s, so a
configuration of capacity c needs ceil(target / (c x F)) replicas (F: the max utilization, default 1), i.e. that
times tp GPUs; headroom, $/hour and $ per million output tokens are defined in `sim.report.plan`.

The recommendation: when every configuration that can meet the SLOs has a price, the one with the lowest $/hour
(ties: fewer GPUs, then the higher capacity); otherwise, with one GPU type, the one that needs the fewest GPUs (ties:
the higher capacity), and with several GPU types (GPU counts of different GPUs are not comparable) the one that needs
the fewest GPUs too, said as such in the report (give --price for every GPU to compare them by cost).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field, replace

from sim.hardware.gpus import GpuSpec
from sim.hardware.models import ModelSpec
from sim.progress import StatusLine
from sim.report import plan
from sim.report.capacity import CapacitySearch, Probe, evaluate_probe, trace_rate
from sim.report.slo import SLO
from sim.serving.replay import ReplayOptions, host_tier_capable
from sim.traces.model import Trace
from sim.units import format_bytes
from sim.workers import stop_pool, worker_pool


@dataclass
class Config:
    allocator: str
    block_size: int
    options: ReplayOptions
    show_gpu: bool = False  # the label names the GPU (reports of several GPUs)
    show_host: bool = False  # the label says whether there is a host tier (reports comparing host tiers)

    @property
    def label(self) -> str:
        host = self.options.host_kv_memory if self.show_host else False
        return config_label(self.options.gpu.name if self.show_gpu else None, self.allocator, self.block_size, host)


def config_label(gpu: str | None, allocator: str, block_size: int, host: int | None | bool = False) -> str:
    """'paged / 16', or 'h100-80gb / paged / 16' in a report of several GPUs; in a report comparing host tiers,
    '... + host 512 GiB' or '... GPU only' (host None)."""
    label = f"{gpu + ' / ' if gpu else ''}{allocator} / {block_size}"
    if host is False:
        return label
    return label + (" GPU only" if host is None else f" + host {format_bytes(host)}")


@dataclass
class ConfigResult:
    allocator: str
    block_size: int
    label: str
    capacity_rps: float  # highest rate that met every SLO (0: none did)
    bracket: tuple  # (lo, hi): the threshold lies in [lo, hi); hi None when never failed
    probes: list[Probe]  # sorted by rate
    unattainable: bool
    unbounded: bool
    non_monotone: bool
    replicas: int | None
    gpus: int | None
    kv_blocks: int
    kv_capacity_tokens: int
    gpu: str = ""  # the GPU's name
    tp: int = 1
    price_per_hour: float | None = None  # USD per GPU-hour (None: not priced)
    headroom: float | None = None  # 1 - target / (replicas x capacity), sim.report.plan
    cost_per_hour: float | None = None  # replicas x tp x price
    tokens_per_request: float | None = None  # output tokens per trace request at the capacity, sim.report.plan
    cost_per_million_tokens: float | None = None  # USD per million output tokens at the target rate
    replicas_by_division: int | None = None  # ceil(target / (capacity x max utilization)), sim.report.plan
    cluster_plans: list = field(default_factory=list)  # sim.report.cluster_plan.ClusterPlan, one per router
    host_kv_memory: int | None = None  # bytes of host tier per GPU (None: GPU only)

    @property
    def rejected(self) -> tuple[int, int] | None:
        """(rejected, requests) at the operating point (None before any probe)."""
        if not self.probes:
            return None
        r = self.operating_point.summary["requests"]
        return int(r["rejected"]), int(r["total"])

    @property
    def first_failure(self) -> Probe | None:
        """The lowest-rate probe that missed the SLOs (None when none did)."""
        failing = [p for p in self.probes if not p.passed]
        return min(failing, key=lambda p: p.rate) if failing else None

    def binding_slos(self, slos: list[SLO]) -> list[str]:
        """The SLOs missed at the lowest failing rate: what gives out first above the capacity."""
        p = self.first_failure
        if p is None:
            return []
        return [s.name for s in slos if p.slo_values.get(s.name) is None or p.slo_values[s.name] > s.threshold_s]

    @property
    def operating_point(self) -> Probe:
        """The probe at the capacity (the highest passing one), or, when none passed, the lowest-rate probe."""
        passing = [p for p in self.probes if p.passed]
        return max(passing, key=lambda p: p.rate) if passing else min(self.probes, key=lambda p: p.rate)


@dataclass
class ReportInputs:
    trace: Trace
    base: ReplayOptions  # model, GPU, engine limits, cost-model options (allocator and block size vary)
    allocators: list[str]
    block_sizes: list[int]
    slos: list[SLO]
    target_rate: float
    precision: float
    start_rate: float | None = None
    trace_note: str = ""  # how the trace was cut (e.g. 'first 4,000 requests')
    title: str = ""
    gpus: list[GpuSpec] = field(default_factory=list)  # GPUs compared (empty: base.gpu alone)
    prices: dict[str, float] = field(default_factory=dict)  # GPU name -> USD per GPU-hour (with --price applied)
    max_utilization: float = 1.0
    routers: list[str] = field(default_factory=list)  # the replica search by cluster simulation (empty: division)
    host_kv_memories: list[int | None] = field(default_factory=list)  # host tiers compared (empty: base's only)

    @property
    def gpu_list(self) -> list[GpuSpec]:
        return list(self.gpus) if self.gpus else [self.base.gpu]

    @property
    def multi_gpu(self) -> bool:
        return len(self.gpu_list) > 1

    def price(self, gpu: GpuSpec) -> float | None:
        return self.prices.get(gpu.name, gpu.price_per_hour)


@dataclass
class ReportData:
    inputs: ReportInputs
    native_rate: float
    results: list[ConfigResult]
    recommendation: ConfigResult | None
    wall_s: float
    probes_run: int
    jobs: int
    cost_model: dict = field(default_factory=dict)
    validation: object = None  # sim.report.validation.ValidationFindings
    recommended_by: str = "gpus"  # 'cost' (lowest $/hour) or 'gpus' (fewest GPUs)


def make_configs(
    base: ReplayOptions,
    allocators: list[str],
    block_sizes: list[int],
    gpus: list[GpuSpec] | None = None,
    host_memories: list[int | None] | None = None,
) -> list[Config]:
    """GPU x block size x allocator x host tier (in that order); labels name the GPU when there are several, and
    the host tier when several are compared (`host_memories`: bytes per GPU, None for GPU only). An allocator that
    cannot take a host tier (`sim.serving.replay.host_tier_capable`) runs GPU only; swap preemption applies where
    there is a host tier."""
    gpus = gpus or [base.gpu]
    multi = len(gpus) > 1
    hosts = host_memories or [base.host_kv_memory]
    show_host = len(hosts) > 1
    configs = []
    for g in gpus:
        for b in block_sizes:
            for a in allocators:
                capable = host_tier_capable(a)
                for h in hosts if capable else [None]:
                    options = replace(base, gpu=g, allocator=a, block_size=b, host_kv_memory=h)
                    if h is None:
                        options = replace(options, host_link=None, preemption="recompute")
                    configs.append(Config(a, b, options, multi, show_host))
    return configs


def recommend(results: list[ConfigResult]) -> tuple[ConfigResult | None, str]:
    """(the recommended configuration, 'cost' or 'gpus'): see the module's docstring."""
    feasible = [r for r in results if r.gpus is not None]
    if not feasible:
        return None, "gpus"
    if all(r.cost_per_hour is not None for r in feasible):
        return min(feasible, key=lambda r: (r.cost_per_hour, r.gpus, -r.capacity_rps)), "cost"
    return min(feasible, key=lambda r: (r.gpus, -r.capacity_rps)), "gpus"


# --- parallel driver ---------------------------------------------------------------------------------------------
_WORKER_TRACE: Trace | None = None


def _init_worker(trace: Trace) -> None:
    global _WORKER_TRACE
    _WORKER_TRACE = trace


def _probe_in_worker(options: ReplayOptions, rate: float, slos: list[SLO], label: str, native: float) -> Probe:
    assert _WORKER_TRACE is not None
    return evaluate_probe(_WORKER_TRACE, options, rate, slos, label, native)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_searches(
    trace: Trace,
    configs: list[Config],
    slos: list[SLO],
    precision: float,
    start_rate: float | None = None,
    jobs: int = 1,
    status: StatusLine | None = None,
) -> dict[str, tuple[CapacitySearch, list[Probe]]]:
    """One capacity search per configuration. With jobs > 1 the probes run on that many local processes, one probe
    per configuration at a time (a search's next rate depends on its last answer)."""
    native = trace_rate(trace)
    start = start_rate if start_rate is not None else native
    searches = {c.label: CapacitySearch(start, precision) for c in configs}
    probes: dict[str, list[Probe]] = {c.label: [] for c in configs}
    by_label = {c.label: c for c in configs}
    count = [0, 0]  # probes done, probes running

    def show(force: bool = False) -> None:
        if status is None:
            return
        finished = sum(s.done for s in searches.values())
        parts = []
        for label, s in searches.items():
            short = label.replace(" / ", "/")
            if s.done:
                parts.append(f"{short} {s.capacity:.3g}")
            elif s.lo is not None and s.hi is not None:
                parts.append(f"{short} [{s.lo:.3g},{s.hi:.3g})")
            else:
                parts.append(f"{short} ..")
        running = f", {count[1]} running" if count[1] else ""
        status.bar(
            "searches", finished, len(searches), f"done, {count[0]} probes{running} | " + " | ".join(parts), force
        )

    def take(label: str, probe: Probe) -> None:
        searches[label].record(probe.rate, probe.passed)
        probes[label].append(probe)
        count[0] += 1
        show(force=True)

    show(force=True)
    if jobs <= 1 or len(configs) == 0:
        for c in configs:
            s = searches[c.label]
            while (rate := s.next_rate()) is not None:
                count[1] = 1
                show()
                take(c.label, evaluate_probe(trace, c.options, rate, slos, c.label, native))
                count[1] = 0
    else:
        workers = min(jobs, len(configs))
        pool = worker_pool(workers, _init_worker, (trace,))
        inflight: dict = {}
        try:
            while True:
                running = set(inflight.values())
                for label, s in searches.items():
                    if label in running:
                        continue
                    rate = s.next_rate()
                    if rate is not None:
                        fut = pool.submit(_probe_in_worker, by_label[label].options, rate, slos, label, native)
                        inflight[fut] = label
                count[1] = len(inflight)
                show()
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    take(inflight.pop(fut), fut.result())
            pool.shutdown()  # inside: a signal while the workers are reaped must still stop them
        except BaseException:  # Ctrl-C, SIGTERM or a failed probe: no worker outlives this
            stop_pool(pool, inflight)
            raise
    if status is not None:
        show(force=True)
        status.close()
    return {label: (searches[label], probes[label]) for label in searches}


# --- the report's figures ------------------------------------------------------------------------------------------
def build_report(
    inputs: ReportInputs, jobs: int = 1, status: StatusLine | None = None, validation_root: str | None = None
) -> ReportData:
    from sim.report.validation import find_validation

    t0 = time.perf_counter()
    configs = make_configs(inputs.base, inputs.allocators, inputs.block_sizes, inputs.gpu_list, inputs.host_kv_memories)
    outcome = run_searches(inputs.trace, configs, inputs.slos, inputs.precision, inputs.start_rate, jobs, status)
    results = []
    for c in configs:
        search, probes = outcome[c.label]
        budget = c.options.budget()
        by_division = plan.replicas_needed(inputs.target_rate, search.capacity, inputs.max_utilization)
        replicas = by_division
        cluster_plans = []
        if inputs.routers and by_division is not None:
            from sim.report.cluster_plan import search_replicas

            for router in inputs.routers:
                if status is not None:
                    status.update(f"{c.label}: replicas behind {router} by cluster simulation", force=True)
                cluster_plans.append(
                    search_replicas(
                        inputs.trace,
                        inputs.target_rate / inputs.max_utilization,
                        c.options,
                        router,
                        inputs.slos,
                        by_division,
                    )
                )
            replicas = cluster_plans[0].replicas
        price = inputs.price(c.options.gpu)
        tp = inputs.base.tp
        cost = plan.cost_per_hour(replicas, tp, price)
        tokens = None
        if probes:
            s = max((p for p in probes if p.passed), key=lambda p: p.rate, default=min(probes, key=lambda p: p.rate))
            s = s.summary
            generated = s["throughput"]["output_tokens_per_s"] * s["duration_s"]
            tokens = plan.output_tokens_per_request(generated, s["requests"]["total"])
        results.append(
            ConfigResult(
                c.allocator,
                c.block_size,
                c.label,
                search.capacity,
                (search.lo, search.hi),
                sorted(probes, key=lambda p: p.rate),
                search.unattainable,
                search.unbounded,
                search.non_monotone,
                replicas,
                None if replicas is None else replicas * inputs.base.tp,
                budget.num_blocks,
                budget.capacity_tokens,
                gpu=c.options.gpu.name,
                tp=tp,
                price_per_hour=price,
                headroom=plan.headroom(inputs.target_rate, replicas, search.capacity),
                cost_per_hour=cost,
                tokens_per_request=tokens,
                cost_per_million_tokens=plan.cost_per_million_output_tokens(cost, inputs.target_rate, tokens),
                replicas_by_division=by_division,
                cluster_plans=cluster_plans,
                host_kv_memory=c.options.host_kv_memory,
            )
        )
    recommendation, recommended_by = recommend(results)
    cost_model = {}
    for r in results:
        if r.probes:
            cost_model = r.probes[0].summary.get("config", {}).get("cost_model", {})
            break
    validation = None
    if validation_root:
        for g in inputs.gpu_list:  # one set of findings for every GPU of the report
            found = find_validation(validation_root, g.name, inputs.base.model.name)
            if validation is None:
                validation = found
                readable = found.files_other + len(found.files_matched)
            else:
                validation.rows += found.rows
                validation.files_matched += found.files_matched
                validation.files_other = readable - len(validation.files_matched)
    return ReportData(
        inputs,
        trace_rate(inputs.trace),
        results,
        recommendation,
        time.perf_counter() - t0,
        sum(len(r.probes) for r in results),
        jobs,
        cost_model,
        validation,
        recommended_by,
    )


def model_rows(model: ModelSpec, tp: int) -> list[tuple[str, str]]:
    return [
        ("model", f"{model.name} ({model.source or 'custom'})"),
        (
            "layers / hidden / heads / KV heads / head size",
            f"{model.num_layers} / {model.hidden_size} / "
            f"{model.num_q_heads} / {model.num_kv_heads} / "
            f"{model.head_size}",
        ),
        ("parameters", f"{model.num_params / 1e9:.2f} B ({model.weight_dtype} weights)"),
        ("KV dtype, bytes per token per GPU", f"{model.kv_dtype}, {model.kv_bytes_per_token(tp):,} B"),
        ("max model length", f"{model.max_model_len:,} tokens"),
    ]
