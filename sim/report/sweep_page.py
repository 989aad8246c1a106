"""The report of a sweep: per trace x model x GPU, throughput and latency against the rate for every allocator and
block size, the KV memory breakdown of every cell, the highest grid rate that meets the SLOs, and the table."""

from __future__ import annotations

import datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.allocators.base import MEMORY_CATEGORIES
from sim.report.charts import MEMORY_COLORS, MEMORY_LABELS, apply_layout, color
from sim.report.html import Page, esc, table
from sim.report.slo import parse_slos
from sim.report.sweep import SweepRun


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["trace"], r["model"], r["gpu"]), []).append(r)
    return groups


def _configs(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(f"{r['allocator']} / {r['block_size']}", []).append(r)
    return {k: sorted(v, key=lambda r: r["rate_rps"]) for k, v in out.items()}


def rate_figure(rows: list[dict], slos) -> go.Figure:
    panels = [
        ("throughput_rps", "throughput (req/s)", None),
        ("ttft_p99_s", "TTFT p99 (s)", "ttft"),
        ("tpot_p99_s", "TPOT p99 (s)", "tpot"),
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.08)
    for i, (label, rs) in enumerate(_configs(rows).items()):
        for k, (col, _, _) in enumerate(panels, start=1):
            fig.add_trace(
                go.Scatter(
                    x=[r["rate_rps"] for r in rs],
                    y=[r[col] for r in rs],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=k == 1,
                    line=dict(color=color(i)),
                ),
                row=1,
                col=k,
            )
    for k, (_, _, metric) in enumerate(panels, start=1):
        fig.update_xaxes(title_text="arrival rate (req/s)", row=1, col=k)
        if metric:
            fig.update_yaxes(type="log", row=1, col=k)
            for s in slos:
                if s.metric == metric and s.percentile == 99:
                    fig.add_hline(y=s.threshold_s, line=dict(color="black", dash="dot"), row=1, col=k)
    return apply_layout(fig, "Throughput and p99 latencies against the arrival rate", 430)


def memory_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    labels = [f"{r['allocator']} / {r['block_size']} @ {r['rate_rps']:.3g}" for r in rows]
    for c in MEMORY_CATEGORIES:
        fig.add_trace(
            go.Bar(name=MEMORY_LABELS[c], x=labels, y=[100 * r[f"kv_{c}"] for r in rows], marker_color=MEMORY_COLORS[c])
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="share of KV cache (%)", range=[0, 100])
    return apply_layout(fig, "KV memory breakdown of every cell (allocator / block size @ req/s)", 440)


TABLE_COLUMNS = (
    "allocator",
    "block_size",
    "rate_rps",
    "throughput_rps",
    "goodput_rps",
    "slo_met",
    "ttft_p99_s",
    "tpot_p99_s",
    "batch_mean",
    "preemptions",
    "rejected",
    "kv_token_states",
    "kv_internal_fragmentation",
)


def build_sweep_page(run: SweepRun, table_path: str) -> str:
    spec = run.spec
    slos = parse_slos(spec.slo) if spec.slo else []
    page = Page(f"Sweep {spec.name}")
    page.add(f"<h1>Sweep {esc(spec.name)}</h1>")
    selection = []
    if spec.first:
        selection.append(f"first {spec.first:,} requests")
    if spec.duration_s:
        selection.append(f"first {spec.duration_s:g} s")
    page.add(
        f"<p>{len(run.cells)} cells: {len(spec.traces)} trace(s) x {len(spec.models)} model(s) x "
        f"{len(spec.gpus)} GPU(s) x {len(spec.allocators)} allocator(s) x {len(spec.block_sizes)} block size(s) "
        f"x {len(spec.rates)} rate(s){'; traces cut to the ' + ', '.join(selection) if selection else ''}. "
        f"Spec: <code>{esc(spec.path)}</code>; table: <code>{esc(table_path)}</code>. "
        f"{run.computed} cells computed on {esc(run.engine)}, {run.resumed} resumed, in {run.wall_s:,.0f} s.</p>"
    )
    if slos:
        page.add(f"<p>SLOs: {esc(', '.join(s.describe() for s in slos))}.</p>")
    n = 0
    for (trace, model, gpu), rows in _groups(run.rows).items():
        page.add(f"<h2>{esc(trace)}: {esc(model)} on {esc(gpu)}</h2>")
        if slos:
            best = []
            for label, rs in _configs(rows).items():
                ok = [r["rate_rps"] for r in rs if r.get("slo_met")]
                best.append([label, f"{max(ok):.4g}" if ok else "none of the grid's rates"])
            page.add(
                "<p>Highest rate of the grid at which the SLOs hold (a grid value, not a search; "
                "<code>sim report</code> searches):</p>"
            )
            page.add(table(["allocator / block size", "req/s"], best))
        n += 1
        page.figure(f"fig-rates-{n}", rate_figure(rows, slos))
        page.figure(f"fig-memory-{n}", memory_figure(rows))
        cols = [c for c in TABLE_COLUMNS if c in rows[0]]
        cells = [[(f"{r[c]:.4g}" if isinstance(r[c], float) else r[c]) for c in cols] for r in rows]
        page.add(table(list(cols), cells, numeric=set(range(2, len(cols)))))
    page.add(
        f'<p class="note">Made by kvsim <code>sim sweep</code> on '
        f"{esc(datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'))}.</p>"
    )
    return page.render()
