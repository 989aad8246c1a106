"""Plain-text tables for the terminal: summaries side by side, the KV-cache groups of those that have them and what
the groups gained over full-attention KV (`sim compare`), and the model and GPU presets (`sim models`, `sim gpus`),
which also print as JSON (`--json`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from sim.allocators.base import MEMORY_CATEGORIES
from sim.hardware.design_capacity import DesignCapacity
from sim.hardware.gpus import GPU_ALIASES, GpuSpec
from sim.hardware.models import ModelSpec
from sim.units import ceil_div, format_bytes

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


# rows added when some summary has a host tier (summary.json `host_tier`, sim.records.host_summary): label and the
# cell of one tier's figures ('-' for a summary without a tier)
HOST_ROWS = [
    ("host hits (of prompt tokens)", lambda t: f"{t['host_hit_rate']:.1%}"),
    ("GiB to host", lambda t: f"{t['bytes_to_host'] / 2**30:,.1f}"),
    ("GiB to GPU", lambda t: f"{t['bytes_to_gpu'] / 2**30:,.1f}"),
    ("swaps out / in", lambda t: f"{t['swap_outs']:,} / {t['swap_ins']:,}"),
    ("link time (s)", lambda t: f"{t['link_time_s']:,.2f}"),
]


def _get(summary: dict, path: tuple[str, ...]):
    value = summary
    for key in path:
        value = value[key]
    return value


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def summary_table(summaries: list[dict]) -> str:
    """One column per summary (allocator), one row per figure; with a host tier, its figures too (HOST_ROWS)."""
    header = ["", *[s["allocator"] for s in summaries]]
    rows = [header] + [[label, *[_fmt(fmt, _get(s, path)) for s in summaries]] for label, path, fmt in SUMMARY_ROWS]
    if any("host_tier" in s for s in summaries):
        for label, cell in HOST_ROWS:
            rows.append([label, *[cell(s["host_tier"]) if "host_tier" in s else "-" for s in summaries]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _columns(rows: list[list[str]], left: int) -> list[str]:
    """Rows as aligned columns (the first `left` columns left-aligned, the others right-aligned), a rule under the
    header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


GROUP_FIGURES = [
    ("token states", "token_states"),
    ("reserved", "reserved"),
    ("internal frag", "internal_fragmentation"),
    ("window freed", "window_freed"),
]


def groups_table(summaries: list[dict]) -> str:
    """The KV-cache groups of each summary that has them (`kv_groups`): one row per group, with its kind, layers, KV
    bytes per token on one GPU and its mean fractions of the KV capacity. '' when no summary has groups."""
    rows = [["allocator", "group", "kind", "layers", "KV B/token", *[label for label, _ in GROUP_FIGURES]]]
    for s in summaries:
        for i, g in enumerate(s.get("kv_groups") or ()):
            kind = f"{g['kind']}({g['window']})" if g["window"] is not None else g["kind"]
            figures = [f"{g['kv_memory'][key]:.1%}" for _, key in GROUP_FIGURES]
            rows.append([s["allocator"], str(i), kind, f"{g['num_layers']}", f"{g['bytes_per_token']:,}", *figures])
    if len(rows) == 1:
        return ""
    title = "KV-cache groups (mean over iterations, as fractions of the KV capacity):"
    return "\n".join([title, *_columns(rows, 3)])


def full_attention_baseline(allocator: str) -> str:
    """The allocator that runs the same design without KV-cache groups, every layer's KV kept for every token (no
    window applied; an MLA model's latent, as every allocator stores it): paged-hybrid -> paged,
    paged-hybrid-prefix-cache -> paged-prefix-cache."""
    return allocator.replace("-hybrid", "")


def concurrency_gain(grouped: dict, baseline: dict) -> float | None:
    """How many more concurrent sequences the grouped design held: its mean batch size (sequences per iteration)
    over the baseline's on the same trace, model, GPU and KV memory. None when the baseline ran nothing."""
    base = baseline["batch_size"]["mean"]
    return grouped["batch_size"]["mean"] / base if base else None


def _held(summary: dict) -> float:
    kv = summary["kv_memory"]
    return kv["token_states"] + kv["reserved"] + kv["internal_fragmentation"]


def design_line(design: DesignCapacity, full_bytes_per_token: int) -> str:
    """The model's KV design against full-attention KV (sim.hardware.design_capacity): requests of one length held
    at once at their largest, and the ratio."""
    gain = "-" if design.gain is None else f"{design.gain:.2f}x"
    return (
        f"KV design: the KV-cache groups hold {gain} the concurrent requests of full-attention KV: "
        f"{design.design_requests:,} vs {design.full_attention_requests:,} requests of {design.tokens:,} tokens (this "
        f"trace's mean prompt + output) at once in {format_bytes(design.kv_memory)}; one takes "
        f"{format_bytes(design.design_bytes_per_request)} vs {format_bytes(design.full_attention_bytes_per_request)} "
        f"(full attention: {full_bytes_per_token:,} B per token per GPU, K and V of every head for every token)"
    )


def concurrency_lines(summaries: list[dict], design: tuple[DesignCapacity, int] | None = None) -> str:
    """For each summary with KV-cache groups: `concurrency_gain` against its full-attention baseline in the same
    comparison (`full_attention_baseline`), the KV each held, and each one's capacity; first, when `design` (the
    capacity and full-attention bytes per token) is given, `design_line`. '' when none has groups."""
    by_name = {s["allocator"]: s for s in summaries}
    lines = []
    if design is not None and any(s.get("kv_groups") for s in summaries):
        lines.append(design_line(*design))
    for s in summaries:
        groups = s.get("kv_groups")
        if not groups:
            continue
        name, base_name = s["allocator"], full_attention_baseline(s["allocator"])
        base = by_name.get(base_name)
        if base is None or base.get("kv_groups") or base_name == name:
            lines.append(f"{name}: add {base_name} to --allocators to compare it with full-attention KV")
            continue
        gain = concurrency_gain(s, base)
        bs, n = s["block_size"], len(groups)
        windows = [g["window"] for g in groups if g["window"] is not None]
        each = f"{s['kv_blocks'] // n * bs:,} tokens in each" if n > 1 else f"{s['kv_blocks'] * bs:,} tokens"
        if windows:
            each += f"; a sliding group keeps at most {ceil_div(max(windows) + bs - 1, bs):,} pages per sequence"
        lines += [
            f"{name} held {'-' if gain is None else f'{gain:.2f}x'} the concurrent sequences of {base_name} (every "
            f"layer's KV kept for every token; an MLA model's latent in both) in this replay: mean batch "
            f"{s['batch_size']['mean']:.2f} vs {base['batch_size']['mean']:.2f}, max {s['batch_size']['max']:,} vs "
            f"{base['batch_size']['max']:,} "
            f"(same trace, model, GPU and KV memory)",
            f"  KV held (token states + reserved + internal fragmentation), mean: {_held(s):.1%} vs {_held(base):.1%} "
            f"of {format_bytes(s['kv_capacity_bytes'])} vs {format_bytes(base['kv_capacity_bytes'])}; preemptions "
            f"{s['requests']['preemptions']:,} vs {base['requests']['preemptions']:,}",
            f"  KV capacity: {base_name} {base['kv_capacity_tokens']:,} tokens; {name} {s['kv_capacity_tokens']:,} "
            f"page slots in {n} group{'s' if n > 1 else ''} ({each})",
        ]
    return "\n".join(lines)


def models_table(models: Iterable[ModelSpec]) -> str:
    """`sim models`: one line per model (parameters: all of them, and those active per token for a mixture of
    experts)."""
    models = list(models)
    w = max([12, *(len(m.name) for m in models)])
    lines = [
        f"{'name':<{w}} {'layers':>6} {'q heads':>7} {'kv heads':>8} {'head':>5} {'kv dtype':>8} "
        f"{'params':>8} {'active':>8} {'max len':>8} {'KV B/token':>11}"
    ]
    for m in models:
        lines.append(
            f"{m.name:<{w}} {m.num_layers:>6} {m.num_q_heads:>7} {m.num_kv_heads:>8} {m.head_size:>5} "
            f"{m.kv_dtype:>8} {m.num_params / 1e9:>7.2f}B {m.active_params / 1e9:>7.2f}B {m.max_model_len:>8,} "
            f"{m.kv_bytes_per_token():>11,}"
        )
    return "\n".join(lines)


def models_json(models: Iterable[ModelSpec]) -> str:
    """`sim models --json`: every field of each model, and its KV bytes per token (on one GPU, tp=1)."""
    return json.dumps(
        [{**dataclasses.asdict(m), "kv_bytes_per_token": m.kv_bytes_per_token()} for m in models], indent=2
    )


def _optional(value: float | None, scale: float, fmt: str) -> str:
    return "-" if value is None else fmt.format(value / scale)


def gpus_table(gpus: Iterable[GpuSpec]) -> str:
    """`sim gpus`: one line per GPU (dense FLOP/s; the host link in each direction), then the aliases."""
    lines = [
        f"{'name':<10} {'memory':>10} {'HBM TB/s':>9} {'bf16 TFLOP/s':>13} {'fp8 TFLOP/s':>12} {'host GB/s':>9} "
        f"{'$/hour':>7}  source"
    ]
    for g in gpus:
        lines.append(
            f"{g.name:<10} {format_bytes(g.memory_bytes):>10} {g.hbm_bandwidth / 1e12:>9.3f} "
            f"{g.bf16_flops / 1e12:>13.1f} {_optional(g.fp8_flops, 1e12, '{:.1f}'):>12} "
            f"{_optional(g.host_link_bandwidth, 1e9, '{:.0f}'):>9} {_optional(g.price_per_hour, 1, '{:.2f}'):>7}  "
            f"{g.source}"
        )
    if GPU_ALIASES:
        lines.append("")
        lines.append("aliases: " + ", ".join(f"{alias} = {name}" for alias, name in GPU_ALIASES.items()))
    return "\n".join(lines)


def gpus_json(gpus: Iterable[GpuSpec]) -> str:
    """`sim gpus --json`: every field of each GPU (bytes, bytes/s, FLOP/s; null where not known), and its aliases."""
    return json.dumps(
        [{**g.to_dict(), "aliases": [alias for alias, name in GPU_ALIASES.items() if name == g.name]} for g in gpus],
        indent=2,
    )


def registry_text(registry: dict[str, type], default: str | None, yours: str) -> str:
    """`sim allocators`, `sim schedulers`, `sim routers`: one line per registered class (name, description), then how
    to load your own."""
    width = max(len(n) for n in registry)
    lines = [
        f"{name:<{width}}  {getattr(cls, 'description', '')}{' (default)' if name == default else ''}"
        for name, cls in registry.items()
    ]
    return "\n".join(lines) + f"\n\nYour own: {yours}"
