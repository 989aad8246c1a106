"""Plain-text tables of summaries for the terminal."""

from __future__ import annotations

from sim.allocators.base import MEMORY_CATEGORIES

# (label, path in summary.json, format)
SUMMARY_ROWS = [
    ("requests completed", ("requests", "completed"), "{:,}"),
    ("requests rejected", ("requests", "rejected"), "{:,}"),
    ("preemptions", ("requests", "preemptions"), "{:,}"),
    ("iterations", ("iterations",), "{:,}"),
    ("duration (s)", ("duration_s",), "{:,.1f}"),
    ("throughput (req/s)", ("throughput", "requests_per_s"), "{:.3f}"),
    ("throughput (output tok/s)", ("throughput", "output_tokens_per_s"), "{:,.1f}"),
    ("batch size mean", ("batch_size", "mean"), "{:.2f}"),
    ("batch size max", ("batch_size", "max"), "{:,}"),
    *[(f"KV {c.replace('_', ' ')}", ("kv_memory", c), "{:.1%}") for c in MEMORY_CATEGORIES],
    *[(f"{m} {p} (s)", ("latency_s", m, p), "{:.3f}") for m in ("ttft", "tpot", "e2e") for p in ("p50", "p99")],
]


def _get(summary: dict, path: tuple[str, ...]):
    value = summary
    for key in path:
        value = value[key]
    return value


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def summary_table(summaries: list[dict]) -> str:
    """One column per summary (allocator), one row per figure."""
    header = ["", *[s["allocator"] for s in summaries]]
    rows = [header] + [[label, *[_fmt(fmt, _get(s, path)) for s in summaries]] for label, path, fmt in SUMMARY_ROWS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
