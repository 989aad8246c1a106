"""The capacity-planning report page: answer, recommendation table, charts, inputs and assumptions, validation, every
probe; and the data files written beside it (`<stem>-data/`: one CSV per figure, report.json with everything)."""

from __future__ import annotations

import datetime
import platform
import sys

from sim.records.io import to_json
from sim.records.rundir import run_info
from sim.report import charts
from sim.report.build import ConfigResult, ReportData, model_rows
from sim.report.capacity import memory_fractions
from sim.report.html import Page, esc, rows_to_csv, table
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


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _slo_header(slo) -> str:
    return f"{slo.name} ({display_unit(slo.metric)[0]})"


def _slo_value(slo, seconds) -> str:
    return _num(None if seconds is None else seconds * display_unit(slo.metric)[1])


def _gpus_text(r: ConfigResult, gpu: str) -> str:
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
    lines.append(
        f"  headroom: {100 * h['headroom']:.1f}% (each replica at {h['target_rate_rps'] / h['replicas']:.4g} of "
        f"{h['capacity_rps']:.4g} req/s; max utilization {h['max_utilization']:g})"
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


def build_page(data: ReportData, command: str | None = None) -> tuple[str, dict[str, str]]:
    inp = data.inputs
    gpu = gpu_names(data)
    title = inp.title or f"Capacity plan: {inp.base.model.name} on {gpu}, {inp.trace.name}"
    page = Page(title)
    slos_text = ", ".join(s.describe() for s in inp.slos)
    page.add(f"<h1>{esc(title)}</h1>")
    info = run_info()
    page.add(
        f'<p class="note" id="provenance">kvsim {esc(info["version"])}, created {esc(info["created_utc"])}'
        + (f": <code>{esc(command)}</code>" if command else "")
        + "</p>"
    )
    if inp.multi_gpu:
        page.add(
            f'<p class="lead">Which GPU: how many requests per second does one replica of '
            f"{esc(inp.base.model.name)} serve within {esc(slos_text)} on this traffic on each of {esc(gpu)}, how "
            f"many GPUs (and dollars) serve {inp.target_rate:g} req/s, and what does the KV-cache design change?</p>"
        )
    else:
        page.add(
            f'<p class="lead">How many requests per second does one {esc(gpu)} replica of '
            f"{esc(inp.base.model.name)} serve within {esc(slos_text)} on this traffic, how many GPUs serve "
            f"{inp.target_rate:g} req/s, and what does the KV-cache design change?</p>"
        )
    page.add(f'<div class="answer">{answer_text(data)}</div>')
    for r in data.results:
        if r.non_monotone:
            page.add(
                f'<div class="warn">{esc(r.label)}: a probe failed below a rate that passed; meeting the SLOs '
                f"was not monotone in the rate here, so the capacity is less certain (see the probes).</div>"
            )
        if r.unbounded:
            page.add(
                f'<div class="warn">{esc(r.label)}: every probe passed, up to {r.capacity_rps:.4g} req/s, where '
                f"the whole trace arrives almost at once: the trace is too short (or the SLOs too loose) to "
                f"overload one replica. Use a longer trace or tighter SLOs.</div>"
            )
    if inp.trace_note:
        page.add(f'<p class="note">Trace: {esc(inp.trace_note)}.</p>')

    # recommendation table
    page.add("<h2>Recommendation</h2>")
    slo_names = [s.name for s in inp.slos]
    priced = any(r.price_per_hour is not None for r in data.results)
    lead = ["GPU"] if inp.multi_gpu else []
    extra = ["headroom"] + (["$/hour", "$/M output tokens"] if priced else [])
    headers = (
        lead
        + [
            "allocator",
            "block size",
            "capacity (req/s)",
            "threshold below (req/s)",
            "missed first",
            "replicas",
            "GPUs",
            "goodput (req/s)",
            "throughput (req/s)",
        ]
        + [_slo_header(s) for s in inp.slos]
        + ["mean batch", "preemptions", "KV blocks"]
        + extra
    )
    rows, classes = [], []
    for r in data.results:
        p = r.operating_point
        s = p.summary
        rows.append(
            ([r.gpu] if inp.multi_gpu else [])
            + [
                r.allocator,
                r.block_size,
                _num(r.capacity_rps),
                _num(r.bracket[1]),
                ", ".join(r.binding_slos(inp.slos)) or "none",
                "n/a" if r.replicas is None else r.replicas,
                _gpus_text(r, r.gpu or gpu),
                _num(p.goodput_rps),
                _num(s["throughput"]["requests_per_s"]),
            ]
            + [_slo_value(x, p.slo_values.get(x.name)) for x in inp.slos]
            + [f"{s['batch_size']['mean']:.1f}", f"{s['requests']['preemptions']:,}", f"{r.kv_blocks:,}"]
            + [_pct(r.headroom)]
            + ([format_usd(r.cost_per_hour), format_usd(r.cost_per_million_tokens)] if priced else [])
        )
        classes.append("best" if r is data.recommendation else "")
    k = len(lead)
    numeric = set(range(2 + k, len(headers))) - {4 + k, 6 + k}
    page.add(table(headers, rows, numeric=numeric, row_classes=classes))
    page.add(
        '<p class="note">Figures at each configuration\'s capacity (the highest rate that met every SLO). '
        '"threshold below": the lowest rate that missed them; "missed first": the SLOs missed there. Goodput: '
        "requests within the per-request targets per second.</p>"
    )

    data_files: dict[str, str] = {}

    def figure(fig_id: str, built, csv_name: str, caption: str = "") -> None:
        fig, frows = built
        page.figure(fig_id, fig, caption)
        data_files[csv_name] = rows_to_csv(frows)

    page.add("<h2>Capacity and GPUs</h2>")
    figure("fig-capacity", charts.capacity_chart(data.results, inp.target_rate, gpu, inp.base.tp), "capacity.csv")
    page.add("<h2>Where the KV memory goes</h2>")
    figure(
        "fig-memory",
        charts.memory_chart(data.results),
        "memory.csv",
        "Token states: KV of tokens computed so far. Reserved: held slots a live request will still fill. "
        "Internal fragmentation: held slots that will never hold a token. External fragmentation: free slots the "
        "head of the queue cannot use. Free: the rest. Means over iterations.",
    )
    figure("fig-timeline", charts.timeline_chart(data.results), "timeline.csv")
    page.add("<h2>Throughput and latency against the arrival rate</h2>")
    figure("fig-rates", charts.rate_chart(data.results, inp.slos), "rates.csv")
    page.add("<h2>Latency distributions</h2>")
    figure("fig-latency", charts.latency_chart(data.results, inp.slos), "latency.csv")
    page.add("<h2>Block-size sensitivity</h2>")
    figure("fig-block-size", charts.block_size_chart(data.results), "block_sizes.csv")

    # inputs
    page.add("<h2>Inputs and assumptions</h2>")
    page.add(table(["input or assumption", "value"], [[k, v] for k, v in inputs_rows(data, command)]))

    # validation
    page.add("<h2>Predicted vs measured on a GPU</h2>")
    v = data.validation
    if v is None:
        page.add('<p class="note">Validation results were not looked for.</p>')
    elif not v.rows:
        page.add(
            f"<p>No GPU validation results exist for {esc(inp.base.model.name)} on {esc(gpu)} "
            f"(looked for <code>{esc(v.root)}/**/validation.json</code>"
            f"{f'; {v.files_other} for other GPUs or models' if v.files_other else ''}). The figures above are "
            f"predictions of the cost model only.</p>"
        )
    else:
        vrows = [
            [r.file, r.allocator, r.metric, _num(r.predicted), _num(r.measured), _pct(r.rel_error), r.device or r.date]
            for r in v.rows
        ]
        page.add(
            table(
                ["file", "allocator", "metric", "predicted", "measured", "relative error", "device / date"],
                vrows,
                numeric={3, 4, 5},
            )
        )
        data_files["validation.csv"] = rows_to_csv([r.__dict__ for r in v.rows])
    if v is not None and v.skipped:
        page.add('<p class="note">Skipped: ' + "; ".join(esc(s) for s in v.skipped) + "</p>")

    # every probe
    page.add("<h2>Every replay of the search</h2>")
    prow = []
    for r in data.results:
        for p in r.probes:
            s = p.summary
            prow.append(
                [r.label, _num(p.rate), f"{p.factor:.4g}", "meets" if p.passed else "misses"]
                + [_slo_value(x, p.slo_values.get(x.name)) for x in inp.slos]
                + [
                    _num(s["throughput"]["requests_per_s"]),
                    _num(p.goodput_rps),
                    f"{s['requests']['completed']:,}",
                    f"{s['requests']['rejected']:,}",
                    f"{s['requests']['preemptions']:,}",
                    f"{p.wall_s:.1f}",
                ]
            )
    page.add(
        table(
            ["configuration", "rate (req/s)", "x trace rate", "SLOs"]
            + [_slo_header(x) for x in inp.slos]
            + ["throughput", "goodput", "completed", "rejected", "preemptions", "replay (s)"],
            prow,
            numeric=set(range(1, 11 + len(slo_names))) - {3},
        )
    )
    created = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page.add(
        f'<p class="note">Made by kvsim <code>sim report</code> on {esc(created)} (Python '
        f"{esc(platform.python_version())}). Data beside this file: <code>{esc('<name>-data/')}</code> "
        "(one CSV per chart, report.json).</p>"
    )

    data_files["results.csv"] = rows_to_csv(result_rows(data))
    data_files["report.json"] = to_json(report_json(data, command))
    return page.render(), data_files


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
