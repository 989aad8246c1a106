"""The report's plotly figures (plotly.graph_objects), each with the table of its data (written beside the HTML).

Every builder returns (figure, rows): rows are dicts with one column set, the CSV of that figure.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.allocators.base import MEMORY_CATEGORIES
from sim.report.build import ConfigResult
from sim.report.capacity import QUANTILE_LEVELS
from sim.report.slo import SLO, display_unit, format_seconds

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MEMORY_COLORS = {
    "token_states": "#2ca02c",
    "reserved": "#98df8a",
    "internal_fragmentation": "#ff7f0e",
    "external_fragmentation": "#d62728",
    "free": "#c7c7c7",
}
MEMORY_LABELS = {
    "token_states": "token states",
    "reserved": "reserved",
    "internal_fragmentation": "internal fragmentation",
    "external_fragmentation": "external fragmentation",
    "free": "free",
}
METRIC_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "end-to-end latency"}
TEMPLATE = "plotly_white"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def apply_layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title=dict(text=title, x=0.01, xanchor="left"),
        height=height,
        margin=dict(l=70, r=30, t=70, b=60),
        legend=dict(orientation="h", y=-0.18),
        font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=13),
    )
    return fig


def capacity_chart(results: list[ConfigResult], target_rate: float, gpu_name: str, tp: int):
    labels = [r.label for r in results]
    caps = [r.capacity_rps for r in results]
    text = [
        (
            f"{r.capacity_rps:.3g} req/s: {r.gpus} GPU{'s' if r.gpus != 1 else ''}"
            + (f", ${r.cost_per_hour:,.2f}/h" if r.cost_per_hour is not None else "")
            if r.gpus is not None
            else "SLOs not met at any rate"
        )
        for r in results
    ]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=caps,
            text=text,
            textposition="outside",
            cliponaxis=False,
            marker_color=[color(i) for i in range(len(results))],
            hovertemplate="%{x}<br>capacity %{y:.4g} req/s<extra></extra>",
        )
    )
    fig.update_yaxes(title_text="capacity per replica (req/s)", rangemode="tozero")
    multi = len({r.gpu for r in results}) > 1
    fig.update_xaxes(title_text="GPU / allocator / block size" if multi else "allocator / block size")
    apply_layout(
        fig,
        f"Capacity per replica within the SLOs, and {gpu_name} GPUs for {target_rate:g} req/s"
        f"{f' (tp={tp})' if tp > 1 else ''}",
        400,
    )
    fig.update_layout(showlegend=False)
    rows = [
        {
            "config": r.label,
            "gpu": r.gpu,
            "allocator": r.allocator,
            "block_size": r.block_size,
            "capacity_rps": r.capacity_rps,
            "bracket_hi_rps": r.bracket[1],
            "replicas": r.replicas,
            "gpus": r.gpus,
            "headroom": r.headroom,
            "cost_per_hour_usd": r.cost_per_hour,
            "cost_per_million_output_tokens_usd": r.cost_per_million_tokens,
        }
        for r in results
    ]
    return fig, rows


def memory_chart(results: list[ConfigResult]):
    fig = go.Figure()
    rows = []
    points = [r.operating_point for r in results]
    labels = [f"{r.label}<br>@ {p.rate:.3g} req/s" for r, p in zip(results, points)]
    for cat in MEMORY_CATEGORIES:
        values = [100 * p.summary["kv_memory"][cat] for p in points]
        fig.add_trace(
            go.Bar(
                name=MEMORY_LABELS[cat],
                x=labels,
                y=values,
                marker_color=MEMORY_COLORS[cat],
                hovertemplate="%{x}<br>" + MEMORY_LABELS[cat] + ": %{y:.1f}%<extra></extra>",
            )
        )
    for r, p in zip(results, points):
        rows.append(
            {"config": r.label, "rate_rps": p.rate, **{c: p.summary["kv_memory"][c] for c in MEMORY_CATEGORIES}}
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="% of the KV cache", range=[0, 100])
    apply_layout(fig, "KV memory breakdown at each configuration's capacity (mean over iterations)", 440)
    return fig, rows


def timeline_chart(results: list[ConfigResult]):
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=False,
        vertical_spacing=0.14,
        subplot_titles=("batch size (sequences per iteration)", "KV cache held (%)"),
    )
    rows = []
    for i, r in enumerate(results):
        p = r.operating_point
        tl = p.timeline
        name = f"{r.label} @ {p.rate:.3g} req/s"
        fig.add_trace(
            go.Scatter(
                x=tl["time_s"],
                y=tl["batch_size"],
                mode="lines",
                name=name,
                legendgroup=r.label,
                line=dict(color=color(i), width=1.5),
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=tl["time_s"],
                y=[100 * v for v in tl["kv_used"]],
                mode="lines",
                name=name,
                legendgroup=r.label,
                showlegend=False,
                line=dict(color=color(i), width=1.5),
            ),
            row=2,
            col=1,
        )
        for k in range(len(tl["time_s"])):
            rows.append(
                {
                    "config": r.label,
                    "rate_rps": p.rate,
                    "time_s": tl["time_s"][k],
                    "batch_size": tl["batch_size"][k],
                    "kv_used": tl["kv_used"][k],
                    "waiting": tl["waiting"][k],
                }
            )
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 100], row=2, col=1)
    apply_layout(fig, "Batch size and KV use over time, at each configuration's capacity (bucket means)", 560)
    return fig, rows


def rate_chart(results: list[ConfigResult], slos: list[SLO]):
    """Throughput and goodput, then one panel per SLO, against the arrival rate; SLO lines and capacities marked."""
    titles = ["throughput and goodput (req/s)"] + [f"{s.name} ({display_unit(s.metric)[0]})" for s in slos]
    n = len(titles)
    cols = 2 if n > 1 else 1
    nrows = math.ceil(n / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, vertical_spacing=0.16, horizontal_spacing=0.1)
    rows = []
    pos = [(k // cols + 1, k % cols + 1) for k in range(n)]
    for i, r in enumerate(results):
        rates = [p.rate for p in r.probes]
        symbols = ["circle" if p.passed else "x" for p in r.probes]
        hover = [
            f"{r.label}<br>rate {p.rate:.4g} req/s: {'meets' if p.passed else 'misses'} the SLOs" for p in r.probes
        ]
        fig.add_trace(
            go.Scatter(
                x=rates,
                y=[p.summary["throughput"]["requests_per_s"] for p in r.probes],
                mode="lines+markers",
                name=f"{r.label} throughput",
                legendgroup=r.label,
                marker=dict(symbol=symbols, size=8, color=color(i)),
                line=dict(color=color(i)),
                hovertext=hover,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=rates,
                y=[p.goodput_rps for p in r.probes],
                mode="lines+markers",
                name=f"{r.label} goodput",
                legendgroup=r.label,
                marker=dict(symbol=symbols, size=6, color=color(i)),
                line=dict(color=color(i), dash="dot"),
                hovertext=hover,
            ),
            row=1,
            col=1,
        )
        for k, s in enumerate(slos, start=1):
            scale = display_unit(s.metric)[1]
            ys = [None if (v := p.slo_values.get(s.name)) is None else v * scale for p in r.probes]
            fig.add_trace(
                go.Scatter(
                    x=rates,
                    y=ys,
                    mode="lines+markers",
                    name=r.label,
                    legendgroup=r.label,
                    showlegend=False,
                    marker=dict(symbol=symbols, size=8, color=color(i)),
                    line=dict(color=color(i)),
                    hovertext=hover,
                ),
                row=pos[k][0],
                col=pos[k][1],
            )
        for p in r.probes:
            rows.append(
                {
                    "config": r.label,
                    "rate_rps": p.rate,
                    "factor": p.factor,
                    "passed": p.passed,
                    "throughput_rps": p.summary["throughput"]["requests_per_s"],
                    "goodput_rps": p.goodput_rps,
                    **{s.name: p.slo_values.get(s.name) for s in slos},
                    "preemptions": p.summary["requests"]["preemptions"],
                    "rejected": p.summary["requests"]["rejected"],
                    "batch_mean": p.summary["batch_size"]["mean"],
                }
            )
        if r.capacity_rps > 0:
            for k in range(n):
                fig.add_vline(
                    x=r.capacity_rps, line=dict(color=color(i), dash="dash", width=1), row=pos[k][0], col=pos[k][1]
                )
    for k, s in enumerate(slos, start=1):
        scale = display_unit(s.metric)[1]
        threshold = s.threshold_s * scale
        values = [v for r in results for p in r.probes if (v := p.slo_values.get(s.name))] + [s.threshold_s]
        log = max(values) / min(values) > 20  # queueing delays span decades: log; otherwise linear from 0
        # The axis type is set before the SLO line and its label: plotly.js reads an annotation's y on a log axis
        # as log10 of the value (shapes take the value itself), so the label's y is given in the axis's own units.
        if log:
            fig.update_yaxes(type="log", row=pos[k][0], col=pos[k][1])
        else:
            fig.update_yaxes(rangemode="tozero", row=pos[k][0], col=pos[k][1])
        fig.add_hline(y=threshold, line=dict(color="black", dash="dot", width=1.5), row=pos[k][0], col=pos[k][1])
        fig.add_annotation(
            text=f"SLO {format_seconds(s.threshold_s)}",
            x=0,
            xref="x domain",
            xanchor="left",
            y=math.log10(threshold) if log else threshold,
            yanchor="bottom",
            showarrow=False,
            row=pos[k][0],
            col=pos[k][1],
        )
    for k in range(n):
        fig.update_xaxes(title_text="arrival rate (req/s)", type="log", row=pos[k][0], col=pos[k][1])
    apply_layout(
        fig,
        "Against the arrival rate: every probe of the capacity search (o meets the SLOs, x misses; dashed: "
        "the capacity found)",
        380 * nrows + 80,
    )
    return fig, rows


def latency_chart(results: list[ConfigResult], slos: list[SLO]):
    metrics = [m for m in ("ttft", "tpot", "e2e") if any(s.metric == m for s in slos)] or ["ttft", "tpot"]
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        subplot_titles=[f"{METRIC_LABELS[m]} ({display_unit(m)[0]})" for m in metrics],
        horizontal_spacing=0.08,
    )
    rows = []
    levels = [float(x) / 100 for x in QUANTILE_LEVELS]
    for i, r in enumerate(results):
        p = r.operating_point
        for k, m in enumerate(metrics, start=1):
            q = p.quantiles.get(m) or []
            if not q:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[v * display_unit(m)[1] for v in q],
                    y=levels[: len(q)],
                    mode="lines",
                    name=f"{r.label} @ {p.rate:.3g} req/s",
                    legendgroup=r.label,
                    showlegend=k == 1,
                    line=dict(color=color(i)),
                ),
                row=1,
                col=k,
            )
            for level, value in zip(QUANTILE_LEVELS, q):
                rows.append(
                    {"config": r.label, "rate_rps": p.rate, "metric": m, "percentile": float(level), "seconds": value}
                )
    for k, m in enumerate(metrics, start=1):
        for s in slos:
            if s.metric == m:
                fig.add_vline(x=s.threshold_s * display_unit(m)[1], line=dict(color="black", dash="dot"), row=1, col=k)
        unit = "milliseconds" if display_unit(m)[0] == "ms" else "seconds"
        fig.update_xaxes(type="log", title_text=f"{unit} (log)", row=1, col=k)
        fig.update_yaxes(range=[0, 1.02], row=1, col=k)
    fig.update_yaxes(title_text="fraction of completed requests <= x", row=1, col=1)
    apply_layout(
        fig, "Latency distributions (cumulative) at each configuration's capacity; dotted: SLO thresholds", 440
    )
    return fig, rows


def block_size_chart(results: list[ConfigResult]):
    fig = go.Figure()
    rows = []
    multi = len({r.gpu for r in results}) > 1

    def group(r: ConfigResult) -> str:  # one line per allocator (per GPU and allocator with several GPUs)
        return f"{r.gpu} / {r.allocator}" if multi else r.allocator

    allocators = list(dict.fromkeys(group(r) for r in results))
    for i, a in enumerate(allocators):
        rs = sorted((r for r in results if group(r) == a), key=lambda r: r.block_size)
        fig.add_trace(
            go.Scatter(
                x=[r.block_size for r in rs],
                y=[r.capacity_rps for r in rs],
                mode="lines+markers",
                name=a,
                marker=dict(size=9),
                line=dict(color=color(i)),
            )
        )
        for r in rs:
            rows.append(
                {
                    "gpu": r.gpu,
                    "allocator": r.allocator,
                    "block_size": r.block_size,
                    "capacity_rps": r.capacity_rps,
                    "kv_blocks": r.kv_blocks,
                    "kv_capacity_tokens": r.kv_capacity_tokens,
                    "internal_fragmentation": r.operating_point.summary["kv_memory"]["internal_fragmentation"],
                }
            )
    sizes = sorted({r.block_size for r in results})
    fig.update_xaxes(title_text="block size (tokens)", type="log", tickvals=sizes, ticktext=[str(s) for s in sizes])
    fig.update_yaxes(title_text="capacity per replica (req/s)", rangemode="tozero")
    note = "" if len(sizes) > 1 else " (one block size given: use --block-sizes 8,16,32 to compare)"
    apply_layout(fig, "Block-size sensitivity: capacity against tokens per KV block" + note, 400)
    return fig, rows
