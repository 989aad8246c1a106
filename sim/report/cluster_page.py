"""The report's cluster section: replicas by cluster simulation beside the division, per configuration and router
(sim.report.cluster_plan), as rows for report.json and as the page's table."""

from __future__ import annotations

from sim.report.build import ReportData
from sim.report.html import esc, table


def cluster_rows(data: ReportData) -> list[dict]:
    """One row per configuration and router: the replica search's answer, and the figures at that count."""
    rows = []
    for r in data.results:
        for plan in r.cluster_plans:
            point = plan.operating_point
            rows.append(
                {
                    "config": r.label,
                    "router": plan.router,
                    "replicas": plan.replicas,
                    "gpus": None if plan.replicas is None else plan.replicas * r.tp,
                    "replicas_by_division": plan.by_division,
                    "slo_values": None if point is None else point.slo_values,
                    "prefix_cache_hit_rate": None if point is None else point.prefix_cache_hit_rate,
                    "load_imbalance_requests": None if point is None else point.load_imbalance,
                    "load_imbalance_busy_s": None if point is None else point.busy_imbalance,
                    "probes": [{"replicas": p.replicas, "passed": p.passed, **p.slo_values} for p in plan.probes],
                }
            )
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def cluster_section(data: ReportData) -> str:
    """HTML: the table of cluster_rows, with what each column means (empty when no router was searched)."""
    rows = cluster_rows(data)
    if not rows:
        return ""
    inp = data.inputs
    slos = inp.slos
    headers = ["configuration", "router", "replicas", "by division", *[s.name for s in slos]]
    headers += ["prefix-cache hits", "imbalance (requests)", "imbalance (busy)", "probes (replicas: pass/fail)"]
    body = []
    for row in rows:
        values = row["slo_values"] or {}
        body.append(
            [
                row["config"],
                row["router"],
                "n/a" if row["replicas"] is None else row["replicas"],
                "n/a" if row["replicas_by_division"] is None else row["replicas_by_division"],
                *[_fmt(values.get(s.name), ".3f") for s in slos],
                _fmt(row["prefix_cache_hit_rate"], ".1%"),
                _fmt(row["load_imbalance_requests"], ".2f"),
                _fmt(row["load_imbalance_busy_s"], ".2f"),
                ", ".join(f"{p['replicas']}: {'pass' if p['passed'] else 'fail'}" for p in row["probes"]),
            ]
        )
    rate = inp.target_rate / inp.max_utilization
    return (
        "<h2>Replicas by cluster simulation</h2>"
        + table(headers, body, numeric=set(range(2, len(headers) - 1)))
        + f'<p class="note">The whole trace scaled to {rate:g} req/s (the target rate'
        + (f" / max utilization {inp.max_utilization:g}" if inp.max_utilization < 1 else "")
        + ") replayed by N replicas behind each router on one clock (<code>sim cluster</code>); "
        "&quot;replicas&quot;: the fewest that met every SLO, which the recommendation uses; &quot;by "
        "division&quot;: the target rate over one replica's capacity, which assumes a perfect balance. SLO "
        "columns: the cluster's figures (seconds) at that count. Imbalance: max / mean over the replicas of requests "
        f"routed and of busy time. {esc('Search: sim/report/cluster_plan.py.')}</p>"
    )
