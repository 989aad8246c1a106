"""The capacity-planning report page: answer, recommendation table, charts, inputs and assumptions, validation, every
probe; and the data files written beside it (`<stem>-data/`: one CSV per figure, report.json with everything)."""

from __future__ import annotations

import datetime
import platform

from sim.records.io import to_json
from sim.records.rundir import run_info
from sim.report import charts
from sim.report.build import ReportData
from sim.report.cluster_page import cluster_section
from sim.report.content import (
    answer_text,
    fmt_num,
    fmt_pct,
    gpu_names,
    gpus_text,
    inputs_rows,
    report_json,
    result_rows,
    slo_header,
    slo_value,
)
from sim.report.html import Page, esc, rows_to_csv, table
from sim.report.plan import format_usd


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
        + [slo_header(s) for s in inp.slos]
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
                fmt_num(r.capacity_rps),
                fmt_num(r.bracket[1]),
                ", ".join(r.binding_slos(inp.slos)) or "none",
                "n/a" if r.replicas is None else r.replicas,
                gpus_text(r, r.gpu or gpu),
                fmt_num(p.goodput_rps),
                fmt_num(s["throughput"]["requests_per_s"]),
            ]
            + [slo_value(x, p.slo_values.get(x.name)) for x in inp.slos]
            + [f"{s['batch_size']['mean']:.1f}", f"{s['requests']['preemptions']:,}", f"{r.kv_blocks:,}"]
            + [fmt_pct(r.headroom)]
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
    page.add(cluster_section(data))

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
            [
                r.file,
                r.allocator,
                r.metric,
                fmt_num(r.predicted),
                fmt_num(r.measured),
                fmt_pct(r.rel_error),
                r.device or r.date,
            ]
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
                [r.label, fmt_num(p.rate), f"{p.factor:.4g}", "meets" if p.passed else "misses"]
                + [slo_value(x, p.slo_values.get(x.name)) for x in inp.slos]
                + [
                    fmt_num(s["throughput"]["requests_per_s"]),
                    fmt_num(p.goodput_rps),
                    f"{s['requests']['completed']:,}",
                    f"{s['requests']['rejected']:,}",
                    f"{s['requests']['preemptions']:,}",
                    f"{p.wall_s:.1f}",
                ]
            )
    page.add(
        table(
            ["configuration", "rate (req/s)", "x trace rate", "SLOs"]
            + [slo_header(x) for x in inp.slos]
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
