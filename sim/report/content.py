"""What the capacity-planning report says, apart from how the page lays it out: the headline and answer texts, the
recommendation rows, the inputs and assumptions, and report.json (`sim.report.page` builds the HTML from them)."""

from __future__ import annotations

import sys

from sim.records.rundir import run_info
from sim.report.build import ConfigResult, ReportData, model_rows
from sim.report.capacity import memory_fractions
from sim.report.cluster_page import cluster_rows
from sim.report.html import esc
from sim.report.plan import format_usd
from sim.report.slo import display_unit, format_seconds, per_request_thresholds
from sim.units import format_bytes

SEARCH_TEXT = (
    "For each configuration, the trace's arrival times are scaled to a rate r (gaps divided by r / the trace's own "
    "rate; lengths unchanged) and replayed; a probe passes when every SLO holds. Assuming that meeting the SLOs is "
    "monotone in the rate, the search doubles or halves the rate from {start} req/s until one rate passes and twice "
    "it fails, then bisects (geometric mean) until the bracket's ends are within {precision:g}% of each other. The "
    "capacity is the highest rate that passed: the true threshold lies between it and the lowest rate that failed, "
    "so it is low by less than {precision:g}%."
)


def fmt_num(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def slo_header(slo) -> str:
    return f"{slo.name} ({display_unit(slo.metric)[0]})"


def slo_value(slo, seconds) -> str:
    return fmt_num(None if seconds is None else seconds * display_unit(slo.metric)[1])


def gpus_text(r: ConfigResult, gpu: str) -> str:
    return "not attainable" if r.gpus is None else f"{r.gpus} x {gpu}"


def gpu_names(data: ReportData) -> str:
    return ", ".join(g.name for g in data.inputs.gpu_list)


def headline(data: ReportData) -> dict | None:
    """The recommendation's figures as the headline gives them (None when nothing meets the SLOs)."""
    rec, inp = data.recommendation, data.inputs
    if rec is None:
        return None
    rejected, total = rec.rejected or (0, 0)
    return {
        "gpu": rec.gpu,
        "allocator": rec.allocator,
        "block_size": rec.block_size,
        "config": rec.label,
        "capacity_rps": rec.capacity_rps,
        "target_rate_rps": inp.target_rate,
        "replicas": rec.replicas,
        "gpus_per_replica": rec.tp,
        "gpus": rec.gpus,
        "max_utilization": inp.max_utilization,
        "headroom": rec.headroom,
        "price_per_gpu_hour_usd": rec.price_per_hour,
        "cost_per_hour_usd": rec.cost_per_hour,
        "output_tokens_per_request": rec.tokens_per_request,
        "cost_per_million_output_tokens_usd": rec.cost_per_million_tokens,
        "rejected": rejected,
        "requests": total,
        "rejected_share": rejected / total if total else None,
        "recommended_by": data.recommended_by,
        "replicas_by": "cluster" if rec.cluster_plans else "division",
        "router": rec.cluster_plans[0].router if rec.cluster_plans else None,
        "replicas_by_division": rec.replicas_by_division,
    }


def _why(data: ReportData) -> str:
    if data.recommended_by == "cost":
        return "the lowest $/hour"
    if data.inputs.multi_gpu:
        return "the fewest GPUs of any type; not every GPU is priced: give --price for each to compare by cost"
    return "the fewest GPUs"


def headline_text(data: ReportData) -> str:
    """The headline as plain text (what `sim report` prints)."""
    h = headline(data)
    if h is None:
        return "no configuration meets the SLOs at any rate probed (exit status 1; the report is written)"
    per = f"{h['gpus_per_replica']} GPUs" if h["gpus_per_replica"] > 1 else "1 GPU"
    lines = [
        f"recommendation: {h['gpus']} x {h['gpu']} = {h['replicas']} replica{'s' if h['replicas'] != 1 else ''} "
        f"({per} each) of {h['allocator']} / {h['block_size']} for {h['target_rate_rps']:g} req/s "
        f"(chosen for {_why(data)})"
    ]
    if h["cost_per_hour_usd"] is not None:
        per_m = h["cost_per_million_output_tokens_usd"]
        lines.append(
            f"  cost: {format_usd(h['cost_per_hour_usd'])}/hour ({h['gpus']} x "
            f"{format_usd(h['price_per_gpu_hour_usd'])}/GPU-hour), "
            + (f"{format_usd(per_m)} per million output tokens at the target rate" if per_m is not None else "")
        )
    else:
        lines.append(f"  cost: not known (no price for {h['gpu']}: give --price {h['gpu']}=DOLLARS_PER_HOUR)")
    if h.get("replicas_by") == "cluster":
        lines.append(
            f"  replicas: by cluster simulation behind the {h['router']} router (the target rate divided by one "
            f"replica's capacity gives {h['replicas_by_division']})"
        )
    lines.append(
        f"  headroom: {100 * h['headroom']:.1f}% (each replica at {h['target_rate_rps'] / h['replicas']:.4g} of "
        f"{h['capacity_rps']:.4g} req/s; max utilization {h['max_utilization']:g})"
    )
    if h["replicas_by"] == "cluster" and h["headroom"] is not None and h["headroom"] < 0:
        lines.append(
            f"    (below zero: behind the {h['router']} router each replica meets the SLOs above the capacity one "
            "replica showed on the whole trace, because its share of the requests arrives more evenly)"
        )
    share = f" ({100 * h['rejected_share']:.1f}%)" if h["rejected_share"] is not None else ""
    lines.append(
        f"  rejected: {h['rejected']:,} of {h['requests']:,} requests{share} (longer than the max model length, or "
        "never placeable)"
    )
    return "\n".join(lines)


def answer_text(data: ReportData) -> str:
    inp = data.inputs
    tp = inp.base.tp
    rec = data.recommendation
    slos = ", ".join(s.describe() for s in inp.slos)
    if rec is None:
        return (
            f"No configuration meets {esc(slos)} at any rate probed: the SLOs are not attainable on "
            f"{esc(gpu_names(data))} for this traffic (see the probes below)." + rejected_text(data)
        )
    gpu = rec.gpu or inp.base.gpu.name
    replica = f"{tp} GPUs" if tp > 1 else f"1 {esc(gpu)}"
    parts = [
        f"<b>{rec.gpus} x {esc(gpu)}</b> serve <b>{inp.target_rate:g} req/s</b> within {esc(slos)}, with the "
        f"<b>{esc(rec.allocator)}</b> allocator (block size {rec.block_size}): one replica ({replica}) sustains "
        f"{rec.capacity_rps:.3g} req/s, so {inp.target_rate:g} req/s needs {rec.replicas} "
        f"replica{'s' if rec.replicas != 1 else ''}"
        + (f" at {inp.max_utilization:g} of capacity at most" if inp.max_utilization < 1 else "")
        + _cluster_clause(rec)
        + f" (chosen for {esc(_why(data))})."
    ]
    if rec.cost_per_hour is not None:
        per_m = rec.cost_per_million_tokens
        parts.append(
            f" <b>{format_usd(rec.cost_per_hour)}/hour</b> ({rec.gpus} x {format_usd(rec.price_per_hour)} per "
            f"GPU-hour)"
            + (f", <b>{format_usd(per_m)} per million output tokens</b> at {inp.target_rate:g} req/s" if per_m else "")
            + "."
        )
    if rec.headroom is not None:
        parts.append(
            f" Headroom: <b>{100 * rec.headroom:.1f}%</b> of the deployment's capacity is unused at the target rate."
        )
    others = [r for r in data.results if r is not rec]
    if others:
        bits = []
        for r in others:
            if r.gpus is None:
                bits.append(f"{esc(r.label)}: SLOs not attainable")
            else:
                cost = f", {format_usd(r.cost_per_hour)}/hour" if r.cost_per_hour is not None else ""
                bits.append(f"{esc(r.label)}: {r.gpus} GPUs ({r.capacity_rps:.3g} req/s per replica{cost})")
        parts.append(" Other configurations: " + "; ".join(bits) + ".")
    parts.append(rejected_text(data))
    return "".join(parts)


def _cluster_clause(rec: ConfigResult) -> str:
    """How the replica count was found: by cluster simulation behind a router, or by division."""
    if not rec.cluster_plans:
        return " (the target rate divided by one replica's capacity)"
    plan = rec.cluster_plans[0]
    return (
        f", the fewest that met the SLOs replayed as a cluster behind the {esc(plan.router)} router (division "
        f"alone gives {plan.by_division})"
    )


def rejected_text(data: ReportData) -> str:
    """The headline's sentence on rejected requests: how many of the trace's requests were never served (at the
    recommendation's operating point, or at each configuration's when none is recommended)."""
    results = [data.recommendation] if data.recommendation is not None else data.results
    counts = sorted({r.operating_point.summary["requests"]["rejected"] for r in results if r.probes})
    total = next((r.operating_point.summary["requests"]["total"] for r in results if r.probes), None)
    if not counts or total is None:
        return ""
    n = counts[0] if len(counts) == 1 else None
    how_many = f"{n:,}" if n is not None else f"{counts[0]:,} to {counts[-1]:,}"
    share = f" ({100 * n / total:.1f}%)" if n is not None and total else ""
    return (
        f" <b>{how_many} of {total:,} requests{share} were rejected</b> (longer than the max model length of "
        f"{data.inputs.base.model.max_model_len:,} tokens, or never placeable) and are left out of every figure."
    )


def result_rows(data: ReportData) -> list[dict]:
    rows = []
    for r in data.results:
        p = r.operating_point
        s = p.summary
        rows.append(
            {
                "gpu": r.gpu,
                "allocator": r.allocator,
                "block_size": r.block_size,
                "capacity_rps": r.capacity_rps,
                "bracket_lo_rps": r.bracket[0],
                "bracket_hi_rps": r.bracket[1],
                "replicas": r.replicas,
                "gpus": r.gpus,
                "headroom": r.headroom,
                "price_per_gpu_hour_usd": r.price_per_hour,
                "cost_per_hour_usd": r.cost_per_hour,
                "output_tokens_per_request": r.tokens_per_request,
                "cost_per_million_output_tokens_usd": r.cost_per_million_tokens,
                "operating_rate_rps": p.rate,
                "passed": p.passed,
                "goodput_rps": p.goodput_rps,
                "throughput_rps": s["throughput"]["requests_per_s"],
                "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
                **{name: v for name, v in p.slo_values.items()},
                "batch_mean": s["batch_size"]["mean"],
                "preemptions": s["requests"]["preemptions"],
                "rejected": s["requests"]["rejected"],
                "kv_blocks": r.kv_blocks,
                "kv_capacity_tokens": r.kv_capacity_tokens,
                **{f"kv_{k}": v for k, v in memory_fractions(s).items()},
                "missed_first": ";".join(r.binding_slos(data.inputs.slos)),
                "probes": len(r.probes),
                "unattainable": r.unattainable,
                "unbounded": r.unbounded,
                "non_monotone": r.non_monotone,
            }
        )
    return rows


def inputs_rows(data: ReportData, command: str | None) -> list[tuple[str, str]]:
    inp = data.inputs
    base, trace = inp.base, inp.trace
    rows: list[tuple[str, str]] = []
    rows.append(
        (
            "trace",
            f"{trace.path} ({trace.format}): {len(trace):,} requests over {trace.duration_s:,.1f} s, "
            f"its own rate {data.native_rate:.4g} req/s",
        )
    )
    if inp.trace_note:
        rows.append(("trace selection", inp.trace_note))
    for note in trace.notes:
        rows.append(("trace note", note))
    rows += model_rows(base.model, base.tp)
    for g in inp.gpu_list:
        price = inp.price(g)
        if price is None:
            priced = "price not given"
        elif g.name in inp.prices:
            priced = f"{format_usd(price)} per GPU-hour (--price)"
        else:
            priced = f"{format_usd(price)} per GPU-hour (the GPU's price_per_hour)"
        rows.append(
            (
                "GPU",
                f"{g.name}: {format_bytes(g.memory_bytes)}, HBM {g.hbm_bandwidth / 1e12:.3f} TB/s, "
                f"{g.bf16_flops / 1e12:.1f} dense bf16 TFLOP/s ({g.source}); {priced}",
            )
        )
    rows.append(("tensor parallelism", f"{base.tp} GPU{'s' if base.tp > 1 else ''} per replica"))
    seen = set()
    for r in data.results:
        if (r.gpu, r.block_size) in seen:
            continue
        seen.add((r.gpu, r.block_size))
        budget = next(p for p in [r.operating_point]).summary
        cfg = budget.get("config", {})
        b = cfg.get("kv_budget_breakdown_bytes") or {}
        if cfg.get("kv_budget_source") == "derived" and b:
            how = (
                f"{format_bytes(b['gpu_memory'])} x {base.gpu_memory_utilization:g} - weights "
                f"{format_bytes(b['weights'])} - activations {format_bytes(b['activations'])} - runtime "
                f"{format_bytes(b['runtime'])} = {format_bytes(b['kv'])}"
            )
        else:
            how = f"given: {format_bytes(base.kv_memory or 0)}"
        rows.append(
            (
                f"KV budget per GPU ({r.gpu + ', ' if inp.multi_gpu else ''}block size {r.block_size})",
                f"{how}; {r.kv_blocks:,} blocks x {r.block_size} tokens = {r.kv_capacity_tokens:,} tokens",
            )
        )
    limits = data.results[0].operating_point.summary.get("config", {}) if data.results else {}
    rows.append(
        (
            "engine limits",
            f"scheduler {limits.get('scheduler', base.scheduler)}, "
            f"max_num_seqs {limits.get('max_num_seqs', base.engine_config.max_num_seqs)}, "
            f"max_num_batched_tokens {limits.get('max_num_batched_tokens')}, "
            f"address space (contiguous) {base.address_space or 'buddy'}, "
            f"sharing {'on' if base.sharing else 'off'}",
        )
    )
    cm = data.cost_model or {}
    kind = cm.get("kind", "roofline")
    if kind == "roofline":
        rows.append(
            (
                "cost model",
                "roofline from the GPU datasheet: max(bytes moved / (HBM bandwidth x "
                f"{cm.get('bandwidth_efficiency', 1):g}), FLOPs / (peak x "
                f"{cm.get('flops_efficiency', 1):g})) + step overhead "
                f"{format_seconds(cm.get('step_overhead_s'))} per iteration; tensor-parallel "
                "communication not modelled",
            )
        )
    else:
        profile = cm.get("profile") or cm.get("file") or cm.get("path") or "(file not named)"
        rows.append(("cost model", f"{kind}: calibrated profile {profile}"))
    if cm:
        rows.append(("cost model parameters", ", ".join(f"{k}={v}" for k, v in cm.items())))
    rows.append(("SLOs", ", ".join(s.describe() for s in inp.slos) + " (percentiles over completed requests)"))
    thresholds = per_request_thresholds(inp.slos)
    rows.append(
        (
            "goodput",
            "requests that completed with "
            + ", ".join(f"{m} <= {format_seconds(t)}" for m, t in thresholds.items())
            + " (per request), per second of the replay",
        )
    )
    rows.append(
        (
            "target rate",
            f"{inp.target_rate:g} req/s, split evenly over replicas, each seeing the trace's "
            f"arrival pattern at its share of the rate",
        )
    )
    rows.append(
        (
            "replicas, headroom and cost",
            f"replicas = ceil(target / (capacity x max utilization)), max utilization {inp.max_utilization:g}; "
            "headroom = 1 - target / (replicas x capacity); $/hour = replicas x GPUs per replica x price per "
            "GPU-hour; $ per million output tokens = $/hour / (target x output tokens per request x 3600) x 1e6, "
            "output tokens per request being those generated at the capacity over the trace's requests (rejected "
            "ones included)",
        )
    )
    if inp.multi_gpu:
        rows.append(
            (
                "recommendation",
                "the lowest $/hour when every configuration that meets the SLOs is priced (ties: fewer GPUs), "
                "else the fewest GPUs; "
                + ("here: by cost" if data.recommended_by == "cost" else "here: by GPU count (not all priced)"),
            )
        )
    start = inp.start_rate if inp.start_rate is not None else data.native_rate
    rows.append(("capacity search", SEARCH_TEXT.format(start=f"{start:.4g}", precision=100 * inp.precision)))
    spans = [len(trace) / r.capacity_rps for r in data.results if r.capacity_rps > 0]
    if spans:
        rows.append(
            (
                "finite trace",
                f"a replay of a finite trace is optimistic just above the capacity: a queue that "
                f"grows for the trace's span S only adds about (r - c) / c x S of waiting by its "
                f"end, so the capacity can be overstated by roughly (largest SLO threshold) / S; "
                f"here S is {min(spans):,.0f} s or more at the capacities found",
            )
        )
    rows.append(
        (
            "rejected requests",
            "requests longer than the max model length (or never placeable) are rejected, "
            "left out of the latency percentiles and never counted as goodput; their count "
            "is in the probes table",
        )
    )
    rows.append(
        (
            "run",
            f"{data.probes_run} replays on {data.jobs} process{'es' if data.jobs != 1 else ''} in {data.wall_s:,.0f} s",
        )
    )
    if command:
        rows.append(("command", command))
    return rows


def report_json(data: ReportData, command: str | None) -> dict:
    inp = data.inputs
    return {
        "title": inp.title,
        "command": command,
        "kvsim": run_info(),
        "argv": sys.argv,
        "trace": {
            "path": inp.trace.path,
            "rows": len(inp.trace),
            "duration_s": inp.trace.duration_s,
            "rate_rps": data.native_rate,
            "selection": inp.trace_note,
            "notes": list(inp.trace.notes),
        },
        "model": inp.base.model.name,
        "gpu": inp.base.gpu.name,  # the first GPU (the only one unless --gpus names several)
        "gpus": [
            {**g.to_dict(), "price_per_hour": inp.price(g), "price_source": _price_source(inp, g)} for g in inp.gpu_list
        ],
        "tp": inp.base.tp,
        "max_utilization": inp.max_utilization,
        "slos": [
            {"name": s.name, "metric": s.metric, "percentile": s.percentile, "threshold_s": s.threshold_s}
            for s in inp.slos
        ],
        "target_rate_rps": inp.target_rate,
        "precision": inp.precision,
        "cost_model": data.cost_model,
        "recommendation": None
        if data.recommendation is None
        else {
            "allocator": data.recommendation.allocator,
            "block_size": data.recommendation.block_size,
            "capacity_rps": data.recommendation.capacity_rps,
            "replicas": data.recommendation.replicas,
            "gpus": data.recommendation.gpus,
            "gpu": data.recommendation.gpu,
            "headroom": data.recommendation.headroom,
            "cost_per_hour_usd": data.recommendation.cost_per_hour,
            "cost_per_million_output_tokens_usd": data.recommendation.cost_per_million_tokens,
        },
        "headline": headline(data),
        "results": result_rows(data),
        "cluster": cluster_rows(data),
        "probes": [
            {
                "config": p.config,
                "rate_rps": p.rate,
                "factor": p.factor,
                "passed": p.passed,
                "slo_values": p.slo_values,
                "goodput_rps": p.goodput_rps,
                "good_fraction": p.good_fraction,
                "wall_s": p.wall_s,
                "summary": p.summary,
            }
            for r in data.results
            for p in r.probes
        ],
        "wall_s": data.wall_s,
        "jobs": data.jobs,
    }


def _price_source(inp, g) -> str | None:
    if g.name in inp.prices:
        return "--price"
    return "gpu spec" if g.price_per_hour is not None else None
