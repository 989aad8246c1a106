"""Replay-speed benchmark: `python -m sim.bench --out reports/speed`.

Replays, with every allocator and each scheduler model (`--schedulers`, default vllm-v0 and vllm-v1 with their
default limits), the shipped Azure conversation trace (llama-2-7b on h100-80gb) and generated ShareGPT-like traces
(llama-2-7b on a100-80gb) at an arrival rate that keeps the KV cache full. Each measurement runs in a fresh subprocess
(so peak resident memory is its own) and is repeated; the report gives medians. Figures:

With `--baseline DIR` (another checkout of kvsim, e.g. a `git worktree` of an older commit), every measurement is
taken in both, alternating run by run in the same session, and baseline-comparison.md gives the ratios.

    wall_s          wall-clock seconds of read + replay (not interpreter start-up)
    peak_rss_mib    peak resident memory of the process (MiB)
    iterations_per_s  simulated iterations / wall_s
    requests_per_s    trace requests / wall_s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from sim.allocators import COMPARED_BY_DEFAULT
from sim.records.io import atomic_write

AZURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "traces", "azure-llm-2023-conv.csv")
SATURATING_RATE = 30.0  # req/s: llama-2-7b on a100-80gb serves ~19 ShareGPT req/s, so the queue and KV stay full


def measure_one(
    trace_path: str, allocator: str, model: str, gpu: str, fast_forward: bool, scheduler: str = "vllm-v0"
) -> dict:
    """Read and replay once in this process; returns the figures of the module docstring."""
    from sim.hardware.gpus import resolve_gpu
    from sim.hardware.models import resolve_model
    from sim.serving.replay import ReplayOptions, replay
    from sim.traces.readers import read_trace

    start = time.perf_counter()
    trace = read_trace(trace_path)
    options = ReplayOptions(
        resolve_model(model), resolve_gpu(gpu), allocator, scheduler=scheduler, fast_forward=fast_forward
    )
    result = replay(trace, options)
    wall = time.perf_counter() - start
    iterations = result.summary["iterations"]
    return {
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "iterations": iterations,
        "iterations_fast_forwarded": result.summary["iterations_fast_forwarded"],
        "requests": len(trace),
        "iterations_per_s": iterations / wall,
        "requests_per_s": len(trace) / wall,
        "preemptions": result.summary["requests"]["preemptions"],
        "mean_batch": result.summary["batch_size"]["mean"],
    }


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subprocess_measure(
    trace_path: str,
    allocator: str,
    model: str,
    gpu: str,
    fast_forward: bool,
    checkout: str = ROOT,
    scheduler: str = "vllm-v0",
) -> dict:
    """measure_one in a fresh process of the kvsim checkout at `checkout` (its `sim` package first on the path)."""
    cmd = [sys.executable, "-m", "sim.bench", "--one", os.path.abspath(trace_path), allocator, model, gpu]
    if not fast_forward:
        cmd.append("--no-fast-forward")
    if scheduler != "vllm-v0":  # a baseline checkout may predate --scheduler
        cmd += ["--scheduler", scheduler]
    env = {**os.environ, "PYTHONPATH": checkout}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=checkout, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _generated(size: int, directory: str) -> str:
    from sim.traces.generate import generate
    from sim.traces.writers import write_trace

    path = os.path.join(directory, f"sharegpt-{size}.csv")
    if not os.path.exists(path):
        write_trace(generate("sharegpt", rate=SATURATING_RATE, count=size, seed=0), path)
    return path


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sim.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--one", nargs=4, metavar=("TRACE", "ALLOCATOR", "MODEL", "GPU"), help=argparse.SUPPRESS)
    p.add_argument("--no-fast-forward", action="store_true", help="measure the step-by-step engine")
    p.add_argument("--scheduler", default="vllm-v0", help=argparse.SUPPRESS)  # of --one
    p.add_argument(
        "--schedulers", default="vllm-v0,vllm-v1", help="scheduler models to measure (default: vllm-v0,vllm-v1)"
    )
    p.add_argument(
        "--cases",
        default="azure,100000,1000000",
        help="comma-separated: azure and/or generated trace sizes (default: azure,100000,1000000)",
    )
    p.add_argument(
        "--allocators", default=",".join(COMPARED_BY_DEFAULT), help="allocators (default: those sim compare runs)"
    )
    p.add_argument(
        "--large-allocators",
        default="paged",
        help="allocators for generated traces of 1,000,000+ requests (default: paged)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported; default 3)")
    p.add_argument("--out", default="reports/speed", help="directory for results.json and README.md")
    p.add_argument("--workdir", help="where generated traces are kept (default: a temporary directory)")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="another kvsim checkout: measure it too, alternating with this one, and write baseline-comparison.md",
    )
    args = p.parse_args(argv)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "sim", "bench.py")):
        p.error(f"--baseline {args.baseline}: not a kvsim checkout (no sim/bench.py)")
    ff = not args.no_fast_forward
    if args.one:
        print(json.dumps(measure_one(*args.one, fast_forward=ff, scheduler=args.scheduler)))
        return 0

    workdir = args.workdir or tempfile.mkdtemp(prefix="sim-bench-")
    os.makedirs(args.out, exist_ok=True)
    results = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case == "azure":
            path, model, gpu = AZURE, "llama-2-7b", "h100-80gb"
            allocators = args.allocators.split(",")
        else:
            size = int(case)
            path, model, gpu = _generated(size, workdir), "llama-2-7b", "a100-80gb"
            allocators = (args.large_allocators if size >= 1_000_000 else args.allocators).split(",")
        schedulers = args.schedulers.split(",")
        for allocator in allocators:
            # the schedulers alternate run by run, so that their ratio is measured under the same conditions
            runs = {s: [] for s in schedulers}
            baseline_runs = {s: [] for s in schedulers}
            for i in range(args.runs):
                for scheduler in schedulers:
                    if args.baseline:
                        baseline_runs[scheduler].append(
                            _subprocess_measure(path, allocator, model, gpu, ff, args.baseline, scheduler)
                        )
                    run = _subprocess_measure(path, allocator, model, gpu, ff, scheduler=scheduler)
                    runs[scheduler].append(run)
                    print(
                        f"{case} {scheduler} {allocator} run {i + 1}: {run['wall_s']:.2f} s, "
                        f"{run['peak_rss_mib']:.0f} MiB"
                        + (f" (baseline {baseline_runs[scheduler][-1]['wall_s']:.2f} s)" if args.baseline else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            for scheduler in schedulers:
                these = runs[scheduler]
                med = {
                    k: statistics.median(r[k] for r in these)
                    for k in ("wall_s", "peak_rss_mib", "iterations_per_s", "requests_per_s")
                }
                results.append(
                    {
                        "case": case,
                        "scheduler": scheduler,
                        "allocator": allocator,
                        "model": model,
                        "gpu": gpu,
                        "fast_forward": ff,
                        "runs": these,
                        "median": med,
                        "iterations": these[0]["iterations"],
                        "iterations_fast_forwarded": these[0]["iterations_fast_forwarded"],
                        **({"baseline_runs": baseline_runs[scheduler]} if args.baseline else {}),
                    }
                )
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(["python -m sim.bench"] + (argv if argv is not None else sys.argv[1:])),
        "results": results,
    }
    if args.baseline:
        record["baseline"] = baseline_description(args.baseline)
        text = comparison_markdown(record)
        atomic_write(os.path.join(args.out, "baseline-comparison.json"), json.dumps(record, indent=2) + "\n")
        atomic_write(os.path.join(args.out, "baseline-comparison.md"), text)
        print(text)
        return 0
    atomic_write(os.path.join(args.out, "results.json"), json.dumps(record, indent=2) + "\n")
    atomic_write(os.path.join(args.out, "README.md"), markdown(record))
    print(markdown(record))
    return 0


def baseline_description(checkout: str) -> str:
    """The baseline checkout's commit (or its path when git cannot tell)."""
    try:
        out = subprocess.run(
            ["git", "-C", checkout, "log", "-1", "--format=%h %s"], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout


def comparison_markdown(record: dict) -> str:
    """This checkout against the baseline: medians of runs taken alternately in one session."""
    m = record["machine"]
    here = baseline_description(ROOT)
    lines = [
        "# Replay speed against a baseline checkout",
        "",
        f"Measured {record['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}.",
        f"Command: `{record['command']}`. Baseline: {record['baseline']}; this checkout: {here} (with any uncommitted",
        "changes). Each measurement ran in its own process, baseline and this checkout alternating run by run; the",
        "figures are medians. ratio = this checkout's wall time / the baseline's (below 1: faster).",
        "",
        "| case | scheduler | allocator | baseline wall (s) | wall (s) | ratio | baseline runs (s) | runs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        base = [x["wall_s"] for x in r["baseline_runs"]]
        cur = [x["wall_s"] for x in r["runs"]]
        b, c = statistics.median(base), statistics.median(cur)
        same = all(x["iterations"] == y["iterations"] for x, y in zip(r["baseline_runs"], r["runs"]))
        lines.append(
            f"| {r['case']} ({r['model']}, {r['gpu']}) | {r.get('scheduler', 'vllm-v0')} | {r['allocator']} "
            f"| {b:.2f} | {c:.2f} | {c / b:.3f} "
            f"| {', '.join(f'{x:.2f}' for x in base)} | {', '.join(f'{x:.2f}' for x in cur)} |"
            + ("" if same else " iterations differ!")
        )
    return "\n".join(lines) + "\n"


TARGETS = [  # (case, allocator or None for every allocator, wall-time target in s), for vllm-v0
    ("azure", "paged", 2.0),
    ("azure", None, 5.0),
    ("1000000", "paged", 60.0),
]
V1_OVER_V0 = 1.5  # vllm-v1's wall time on the Azure trace at most this many times vllm-v0's, allocator by allocator
PEAK_RSS_MIB = 2048  # 1,000,000 ShareGPT-like requests, paged, under each scheduler
TEN_X_RATIO = 11  # 10x the requests at most this many times the time (paged, each scheduler)


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# Replay speed",
        "",
        f"Measured {record['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, {m['platform']}.",
        f"Command: `{record['command']}`. Each figure is the median of the runs listed in results.json, each run in "
        f"its own process (wall = reading the trace + replaying it).",
        "",
        "| case | scheduler | allocator | requests | iterations | fast-forwarded | wall (s) | peak RSS (MiB) "
        "| iterations/s | requests/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        med = r["median"]
        ff = r["iterations_fast_forwarded"] / r["iterations"] if r["iterations"] else 0
        lines.append(
            f"| {r['case']} ({r['model']}, {r['gpu']}) | {r.get('scheduler', 'vllm-v0')} | {r['allocator']} "
            f"| {r['runs'][0]['requests']:,} | {r['iterations']:,} | {ff:.0%} | {med['wall_s']:.2f} "
            f"| {med['peak_rss_mib']:.0f} | {med['iterations_per_s']:,.0f} | {med['requests_per_s']:,.0f} |"
        )
    wall = {
        (r["case"], r.get("scheduler", "vllm-v0"), r["allocator"]): r["median"]["wall_s"] for r in record["results"]
    }
    rss = {
        (r["case"], r.get("scheduler", "vllm-v0"), r["allocator"]): r["median"]["peak_rss_mib"]
        for r in record["results"]
    }
    lines += ["", "| target | measured | met? |", "|---|---|---|"]
    for case, allocator, limit in TARGETS:
        walls = {a: w for (c, s, a), w in wall.items() if c == case and s == "vllm-v0" and allocator in (None, a)}
        if not walls:
            lines.append(f"| vllm-v0 {case} {allocator or 'every allocator'} <= {limit:g} s | not measured | - |")
            continue
        worst = max(walls, key=walls.get)
        lines.append(
            f"| vllm-v0 {case} {allocator or 'every allocator'} <= {limit:g} s | {walls[worst]:.2f} s ({worst}) | "
            f"{'yes' if walls[worst] <= limit else f'no, {walls[worst] / limit:.1f}x over'} |"
        )
    ratios = {
        a: wall[("azure", "vllm-v1", a)] / w
        for (c, s, a), w in wall.items()
        if c == "azure" and s == "vllm-v0" and ("azure", "vllm-v1", a) in wall
    }
    if ratios:
        worst = max(ratios, key=ratios.get)
        lines.append(
            f"| azure vllm-v1 / vllm-v0 wall, every allocator, <= {V1_OVER_V0:g}x | {ratios[worst]:.2f}x ({worst}) "
            f"| {'yes' if ratios[worst] <= V1_OVER_V0 else 'no'} |"
        )
    for sched in sorted({s for _, s, _ in wall}):
        if ("1000000", sched, "paged") in rss:
            peak = rss[("1000000", sched, "paged")]
            lines.append(
                f"| {sched} 1000000 paged peak memory <= {PEAK_RSS_MIB // 1024} GiB | {peak:.0f} MiB | "
                f"{'yes' if peak <= PEAK_RSS_MIB else 'no'} |"
            )
        if ("100000", sched, "paged") in wall and ("1000000", sched, "paged") in wall:
            ratio = wall[("1000000", sched, "paged")] / wall[("100000", sched, "paged")]
            lines.append(
                f"| {sched}: 10x the requests costs <= {TEN_X_RATIO}x the time (paged) | {ratio:.1f}x | "
                f"{'yes' if ratio <= TEN_X_RATIO else 'no'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
