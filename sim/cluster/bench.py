"""Cluster-scale benchmark: `python -m sim.cluster.bench --out reports/speed/cluster`.

One ShareGPT-like trace of `--requests` requests (1,000,000 by default) arriving at `--replicas` x 30 req/s (30 req/s
keeps one llama-2-7b replica on an a100-80gb busy: see sim.bench), replayed two ways, alternating, `--runs` times,
each in a fresh subprocess (so its peak resident memory is its own):

    cluster  one `sim.cluster` replay: `--replicas` replicas behind the round-robin router, and its summary
    split    the same requests one replica's share at a time (request i to replica i mod R, as round-robin routes
             them): R replays of a lone replica, one after the other, each with its summary

Figures (medians over the runs; the ratio is taken within each run, then its median):

    wall_s          seconds of replay and summary (the trace is read before the clock starts)
    peak_rss_mib    peak resident memory of the process (MiB)
    ratio           cluster wall_s / split wall_s of the same run (target: <= 1.5)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from sim.records.io import atomic_write

RATE_PER_REPLICA = 30.0  # req/s
MODEL, GPU = "llama-2-7b", "a100-80gb"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(kind: str, trace_path: str, replicas: int) -> dict:
    """One measurement in this process (see the module docstring)."""
    import numpy as np

    from sim.cluster.run import ClusterOptions, simulate_cluster
    from sim.cluster.summary import cluster_summary
    from sim.hardware.gpus import resolve_gpu
    from sim.hardware.models import resolve_model
    from sim.serving.replay import ReplayOptions, replay
    from sim.traces.readers import read_trace

    trace = read_trace(trace_path)
    options = ReplayOptions(resolve_model(MODEL), resolve_gpu(GPU))
    start = time.perf_counter()
    if kind == "cluster":
        summary = cluster_summary(simulate_cluster(trace, ClusterOptions(options, replicas, "round-robin")))
        completed = summary["requests"]["completed"]
    else:
        completed = 0
        for r in range(replicas):
            result = replay(trace.select(np.arange(r, len(trace), replicas)), options)
            completed += result.summary["requests"]["completed"]
            del result
    wall = time.perf_counter() - start
    return {
        "kind": kind,
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "completed": completed,
    }


def _subprocess(kind: str, trace_path: str, replicas: int) -> dict:
    cmd = [sys.executable, "-m", "sim.cluster.bench", "--one", kind, trace_path, "--replicas", str(replicas)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [
        "# Cluster-scale benchmark",
        "",
        f"{record['requests']:,} ShareGPT-like requests at {record['rate']:,.0f} req/s, {record['replicas']} replicas "
        f"of {MODEL} on {GPU} (vllm-v1, paged), round-robin. Machine: {record['machine']}. Commit "
        f"`{record['commit']}`, {record['date']}. Command: `{record['command']}`. Medians of {record['runs']} runs, "
        "alternating, each measurement in a fresh process (sim/cluster/bench.py says what each figure is).",
        "",
        "| replay | wall (s) | peak memory (MiB) | requests completed |",
        "|---|---:|---:|---:|",
        f"| cluster (one process, {record['replicas']} replicas) | {s['cluster_wall_s']:,.1f} | "
        f"{s['cluster_peak_rss_mib']:,.0f} | {s['completed']:,} |",
        f"| split ({record['replicas']} lone replays, one after the other) | {s['split_wall_s']:,.1f} | "
        f"{s['split_peak_rss_mib']:,.0f} | {s['completed']:,} |",
        "",
        f"Cluster / split wall time, per run: {', '.join(f'{r:.3f}' for r in s['ratios'])}; median "
        f"**{s['ratio']:.3f}** (target <= 1.5). Cluster peak memory {s['cluster_peak_rss_mib'] / 1024:.2f} GiB "
        "(target <= 4 GiB).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.cluster.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/speed/cluster", help="directory for results.json and README.md")
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--replicas", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("KIND", "TRACE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.replicas)))
        return 0
    from sim.bench import machine
    from sim.traces.generate import generate
    from sim.traces.writers import write_trace

    rate = RATE_PER_REPLICA * args.replicas
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sharegpt.csv")
        write_trace(generate("sharegpt", rate=rate, count=args.requests, seed=0), path)
        runs = []
        for i in range(args.runs):
            pair = {kind: _subprocess(kind, path, args.replicas) for kind in ("cluster", "split")}
            runs.append(pair)
            cluster, split = pair["cluster"]["wall_s"], pair["split"]["wall_s"]
            print(f"run {i + 1}/{args.runs}: cluster {cluster:.1f} s, split {split:.1f} s, ratio {cluster / split:.3f}")
    med = lambda kind, key: statistics.median(r[kind][key] for r in runs)  # noqa: E731
    ratios = [r["cluster"]["wall_s"] / r["split"]["wall_s"] for r in runs]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "requests": args.requests,
        "replicas": args.replicas,
        "rate": rate,
        "runs": args.runs,
        "machine": machine()["cpu"] + f", {os.cpu_count()} cores",
        "commit": commit.stdout.strip() or "unknown",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": "python -m sim.cluster.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "measurements": runs,
        "summary": {
            "cluster_wall_s": med("cluster", "wall_s"),
            "split_wall_s": med("split", "wall_s"),
            "cluster_peak_rss_mib": med("cluster", "peak_rss_mib"),
            "split_peak_rss_mib": med("split", "peak_rss_mib"),
            "ratios": ratios,
            "ratio": statistics.median(ratios),
            "completed": runs[0]["cluster"]["completed"],
        },
    }
    if runs[0]["cluster"]["completed"] != runs[0]["split"]["completed"]:
        raise SystemExit("cluster and split replays completed different numbers of requests: not the same work")
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, "results.json"), json.dumps(record, indent=1) + "\n")
    atomic_write(os.path.join(args.out, "README.md"), markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
