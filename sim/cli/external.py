"""`sim validate-external RESULT.json [replay options]`: a `vllm bench serve --save-result --save-detailed` run, its
requests replayed through the simulator, our prediction beside every figure the benchmark measured.

The requests (prompt and output lengths, start times) come from the file (`sim.traces.readers.vllm_bench`); the
model, GPU, KV budget, scheduler limits and cost model from the command line, as for `sim replay`. The figures are
those of vllm-bench.json (`sim.records.vllm_bench`), each as {predicted, measured, relative_error}. A measured figure
is the file's own key; one the file lacks (vLLM writes percentiles only for `--percentile-metrics`, by default
ttft,tpot,itl, so no e2el) is computed from its per-request lists with vLLM's formulas (`measured_from`: "lists").
relative_error = (predicted - measured) / measured (null when the measured value is 0 or missing).

Writes `external-validation.json`, then the replay's own files (steps.csv, requests.csv, vllm-bench.json,
summary.json last) into --out.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np

from sim.errors import UserError
from sim.records.vllm_bench import (
    DEFAULT_PERCENTILES,
    GOODPUT_SLOS,
    MS,
    metric_keys,
    percentile_word,
    vllm_bench_metrics,
)

_PERCENTILE_KEY = re.compile(r"^p(\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el)_ms$")


def file_percentiles(result: dict) -> tuple[float, ...]:
    """The percentiles the file reports (its p<P>_<metric>_ms keys), with vLLM's default 99."""
    found = {float(m.group(1)) for k in result if (m := _PERCENTILE_KEY.match(k))}
    return tuple(sorted(found | set(DEFAULT_PERCENTILES)))


def _stats_ms(values: np.ndarray, percentiles) -> dict[str, float]:
    """vLLM's statistics of one metric (ms), as its calculate_metrics computes them (0 for an empty set)."""
    v = np.asarray(values, dtype=np.float64) if len(values) else np.zeros(1)
    out = {"mean": float(np.mean(v)) * MS, "median": float(np.median(v)) * MS, "std": float(np.std(v)) * MS}
    for p in percentiles:
        out[percentile_word(p)] = float(np.percentile(v, p)) * MS
    return out


def measured_from_lists(result: dict, ok: np.ndarray, percentiles) -> dict[str, float]:
    """The latency figures recomputed from the file's per-request lists (successful requests), vLLM's formulas."""
    out: dict[str, float] = {}
    n = len(ok)
    lists = {k: result.get(k) for k in ("ttfts", "latencies", "itls", "output_lens")}
    if any(not isinstance(v, list) or len(v) != n for v in lists.values()):
        return out
    try:
        ttft = np.array([float(lists["ttfts"][i]) for i in np.nonzero(ok)[0]])
        e2el = np.array([float(lists["latencies"][i]) for i in np.nonzero(ok)[0]])
        outs = np.array([int(lists["output_lens"][i]) for i in np.nonzero(ok)[0]])
        itl = [float(x) for i in np.nonzero(ok)[0] for x in (lists["itls"][i] or [])]
    except (TypeError, ValueError):
        return out
    multi = outs > 1
    tpot = (e2el[multi] - ttft[multi]) / (outs[multi] - 1)
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", np.array(itl)), ("e2el", e2el)):
        s = _stats_ms(values, percentiles)
        out[f"mean_{name}_ms"], out[f"median_{name}_ms"], out[f"std_{name}_ms"] = s["mean"], s["median"], s["std"]
        for p in percentiles:
            out[f"p{percentile_word(p)}_{name}_ms"] = s[percentile_word(p)]
    return out


def compare(predicted: dict, result: dict, ok: np.ndarray, keys: list[str]) -> dict:
    """{key: {predicted, measured, relative_error, measured_from}} for every figure."""
    derived = measured_from_lists(result, ok, file_percentiles(result))
    rows = {}
    for key in keys:
        value = result.get(key)
        source = "file"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            value, source = derived.get(key), "lists" if key in derived else None
        pred = predicted.get(key)
        rel = (pred - value) / value if value not in (None, 0) and pred is not None else None
        rows[key] = {"predicted": pred, "measured": value, "relative_error": rel, "measured_from": source}
    return rows


def parse_goodput(items: list[str] | None) -> dict[str, float] | None:
    """vLLM's --goodput KEY:MS pairs (ttft, tpot, e2el)."""
    if not items:
        return None
    slos = {}
    for item in items:
        name, sep, value = item.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = float("nan")
        if not sep or name not in GOODPUT_SLOS or not ms >= 0:
            raise UserError(f"--goodput takes KEY:MILLISECONDS with KEY one of {', '.join(GOODPUT_SLOS)}, got {item!r}")
        slos[name] = ms
    return slos


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"


def table(rows: dict) -> str:
    lines = [f"{'figure':<26} {'predicted':>12} {'measured':>12} {'rel. error':>10}"]
    for key, r in rows.items():
        rel = "-" if r["relative_error"] is None else f"{r['relative_error']:+.1%}"
        mark = "" if r["measured_from"] != "lists" else "  (measured from the per-request lists)"
        lines.append(f"{key:<26} {_fmt(r['predicted']):>12} {_fmt(r['measured']):>12} {rel:>10}{mark}")
    return "\n".join(lines)


def cmd_validate_external(args: argparse.Namespace) -> int:
    from sim.cli.main import run_one, save_or_rescue
    from sim.cli.options import print_header, replay_options
    from sim.records.io import atomic_write, to_json, with_run_info, write_replay
    from sim.records.rundir import open_run_dir, run_info
    from sim.traces.readers.vllm_bench import load_result, succeeded, trace_from_result

    slos = parse_goodput(args.goodput)
    result = load_result(args.result)
    trace = trace_from_result(args.result, result, args.seed)
    ok = succeeded(args.result, result)
    options = replay_options(args, args.allocator)
    print_header(trace, options)
    percentiles = file_percentiles(result)
    keys = metric_keys(percentiles, goodput=slos is not None)
    stem = f"{trace.name}-external-{os.path.basename(args.allocator).replace(':', '-')}"
    with open_run_dir(args.out, stem, args.force) as run:
        out = run.path
        replayed = run_one(trace, options, args.quiet, args.allocator)
        predicted = vllm_bench_metrics(
            replayed.steps, replayed.requests, float(replayed.summary["duration_s"]), percentiles, slos
        )
        rows = compare(predicted, result, ok, keys)
        report = {
            "result_file": os.path.abspath(args.result),
            "vllm": {k: result.get(k) for k in ("date", "backend", "model_id", "request_rate", "max_concurrency")},
            "requests_replayed": len(trace),
            "requests_skipped": trace.skipped_rows,
            "trace_notes": trace.notes,
            "allocator": args.allocator,
            "figures": rows,
            "itl": predicted["kvsim"]["itl"],
            "goodput_slos_ms": slos,
            "kvsim": run_info(),
        }

        def save(d: str) -> None:
            atomic_write(os.path.join(d, "external-validation.json"), to_json(report))
            write_replay(d, replayed, trace.request_id)

        def summary_only(d: str) -> None:
            atomic_write(os.path.join(d, "external-validation.json"), to_json(report))
            atomic_write(os.path.join(d, "summary.json"), to_json(with_run_info(replayed.summary)))

        save_or_rescue(out, stem, save, summary_only)
    print()
    print(table(rows))
    if result.get("request_goodput") is not None and slos is None:
        print("\nthe file has request_goodput: give the same --goodput SLOs to predict it")
    print(f"\nwrote {out}/external-validation.json, vllm-bench.json, summary.json, steps.csv, requests.csv")
    return 0


def register(sub) -> None:
    from sim.allocators import REGISTRY
    from sim.cli.options import add_hardware_options, add_policy_options, seed

    p = sub.add_parser(
        "validate-external",
        help="replay the requests of a `vllm bench serve --save-detailed` result; prediction beside measurement",
    )
    p.add_argument("result", metavar="RESULT.json", help="a `vllm bench serve --save-result --save-detailed` file")
    add_hardware_options(p)
    add_policy_options(p)
    p.add_argument(
        "--allocator",
        default="paged",
        help=f"allocator: {', '.join(REGISTRY)} or package.module:ClassName (default: paged, as vLLM)",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the beam model, and of the arrivals drawn for a file without start_times (default: 0)",
    )
    p.add_argument(
        "--goodput",
        nargs="+",
        metavar="KEY:MS",
        help="SLOs as vLLM's --goodput (ttft, tpot, e2el in ms): adds request_goodput to the figures",
    )
    p.add_argument("--out", help="output directory (default: a new directory under runs/)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_validate_external)
