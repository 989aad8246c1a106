"""`sim cluster` (a trace replayed by replicas behind a router, or by prefill and decode pools) and `sim routers`."""

from __future__ import annotations

import argparse
import os

from sim.errors import UserError


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """The options that make a cluster of the replica the replay options describe (also `sim report --replicas`)."""
    from sim.cli.options import positive_int
    from sim.cluster.link import KV_LINKS
    from sim.cluster.routers import DEFAULT_ROUTER, ROUTERS

    p.add_argument("--replicas", type=positive_int, help="replicas behind the router (default: 1)")
    p.add_argument(
        "--router",
        default=DEFAULT_ROUTER,
        help=f"router: {', '.join(ROUTERS)} or package.module:ClassName (default: {DEFAULT_ROUTER}; see `sim routers`)",
    )
    p.add_argument(
        "--prefill-replicas",
        type=positive_int,
        help="prefill/decode disaggregation: replicas of the prefill pool (with --decode-replicas and --kv-link)",
    )
    p.add_argument("--decode-replicas", type=positive_int, help="replicas of the decode pool")
    p.add_argument(
        "--kv-link",
        metavar="LINK|BYTES_PER_S",
        help=f"the link each prefill replica sends KV over: {', '.join(KV_LINKS)} or bytes/s in one direction",
    )
    p.add_argument(
        "--kv-link-latency",
        metavar="SECONDS",
        help="latency of one KV transfer (default: the link preset's; 0 for a bandwidth given as a number)",
    )


def cluster_options(args: argparse.Namespace, replica):
    """ClusterOptions from the options of add_cluster_options around the ReplayOptions `replica` (checked)."""
    from sim.cli.options import option_duration
    from sim.cluster.link import parse_kv_link
    from sim.cluster.run import ClusterOptions, validate_cluster

    latency = option_duration("--kv-link-latency", args.kv_link_latency) if args.kv_link_latency else None
    if latency is not None and args.kv_link is None:
        raise UserError("--kv-link-latency applies with --kv-link")
    options = ClusterOptions(
        replica,
        replicas=args.replicas or (0 if args.prefill_replicas or args.decode_replicas else 1),
        router=args.router,
        router_seed=args.seed,
        prefill_replicas=args.prefill_replicas or 0,
        decode_replicas=args.decode_replicas or 0,
        link=parse_kv_link(args.kv_link, latency) if args.kv_link else None,
    )
    validate_cluster(options)
    return options


def replicas_table(summary: dict) -> str:
    """One line per replica: what it was given and what it did."""
    lines = []
    for pool, rows in summary["replicas"].items():
        lines.append(
            f"{'pool':<8} {'replica':>7} {'requests':>9} {'tokens':>11} {'busy (s)':>9} {'batch mean':>10} "
            f"{'prefix hit':>10} {'ttft p99 (s)':>12}"
        )
        for r in rows:
            ttft = r["latency_s"]["ttft"]["p99"]
            lines.append(
                f"{pool:<8} {r['replica']:>7} {r['routed_requests']:>9,} {r['routed_tokens']:>11,} "
                f"{r['busy_s']:>9,.1f} {r['batch_size']['mean']:>10.2f} "
                f"{r['sharing']['prefix_cache_hit_rate']:>10.1%} {'-' if ttft is None else f'{ttft:.3f}':>12}"
            )
    return "\n".join(lines)


def imbalance_line(summary: dict) -> str:
    parts = []
    for pool, figures in summary["load_imbalance"].items():
        shown = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in figures.items())
        parts.append(f"{pool}: {shown}")
    return "load imbalance (max / mean): " + "; ".join(parts)


def write_cluster(directory: str, run, summary: dict, request_ids) -> None:
    """requests.csv (with the replica that served each request), replicas.csv and summary.json, last."""
    from sim.records.io import atomic_write, to_json, with_run_info
    from sim.records.requests import requests_csv

    lines = requests_csv(run.requests, request_ids).splitlines()
    where = run.replica_of.tolist()
    body = [f"{lines[0]},replica"] + [f"{line},{'' if r < 0 else r}" for line, r in zip(lines[1:], where)]
    atomic_write(os.path.join(directory, "requests.csv"), "\n".join(body) + "\n")
    rows = ["pool,replica,routed_requests,routed_tokens,busy_s,completed,batch_mean,prefix_cache_hit_rate,ttft_p99_s"]
    for pool, replicas in summary["replicas"].items():
        for r in replicas:
            ttft = r["latency_s"]["ttft"]["p99"]
            rows.append(
                f"{pool},{r['replica']},{r['routed_requests']},{r['routed_tokens']},{r['busy_s']:.9g},"
                f"{r['requests']['completed']},{r['batch_size']['mean']:.6g},"
                f"{r['sharing']['prefix_cache_hit_rate']:.6g},{'' if ttft is None else f'{ttft:.9g}'}"
            )
    atomic_write(os.path.join(directory, "replicas.csv"), "\n".join(rows) + "\n")
    atomic_write(os.path.join(directory, "summary.json"), to_json(with_run_info(summary)))


def cmd_cluster(args: argparse.Namespace) -> int:
    from sim.cli.main import save_or_rescue
    from sim.cli.options import print_header, replay_options
    from sim.cli.tables import summary_table
    from sim.cluster.run import simulate_cluster
    from sim.cluster.summary import cluster_summary
    from sim.progress import ProgressBar
    from sim.records.io import atomic_write, to_json, with_run_info
    from sim.records.rundir import open_run_dir
    from sim.traces.readers import read_trace

    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    if args.host_kv_memory or args.preemption != "recompute":
        raise UserError(
            "sim cluster does not model host tiers yet (--host-kv-memory, --preemption swap): use sim replay"
        )
    options = cluster_options(args, replay_options(args, args.allocator))
    print_header(trace, options.replica)
    if options.disaggregated:
        link = options.link
        print(
            f"cluster: {options.prefill_replicas} prefill + {options.decode_replicas} decode replicas, router "
            f"{args.router}, KV link {link.bandwidth / 1e9:g} GB/s, {link.latency_s * 1e6:g} us"
        )
    else:
        print(f"cluster: {options.replicas} replicas, router {args.router}")
    stem = f"{trace.name}-cluster{options.num_replicas}-{os.path.basename(args.router).replace(':', '-')}"
    with open_run_dir(args.out, stem, args.force) as run_dir:
        out = run_dir.path
        bar = ProgressBar("routed", enabled=False if args.quiet else None)
        try:
            run = simulate_cluster(trace, options, progress=bar)
        finally:
            bar.close()
        summary = cluster_summary(run)

        def summary_only(d: str) -> None:
            atomic_write(os.path.join(d, "summary.json"), to_json(with_run_info(summary)))

        save_or_rescue(out, stem, lambda d: write_cluster(d, run, summary, trace.request_id), summary_only)
    print()
    summary = {**summary, "allocator": f"cluster ({options.num_replicas} replicas)"}
    print(summary_table([summary]))
    print(f"prefix-cache hit rate: {summary['sharing']['prefix_cache_hit_rate']:.1%}")
    print(imbalance_line(summary))
    if "kv_transfer" in summary:
        t = summary["kv_transfer"]
        mean = t["time_s"]["mean"]
        print(
            f"KV transfers: {t['transfers']:,}, {t['bytes'] / 2**30:,.2f} GiB, "
            f"time mean {'-' if mean is None else f'{mean * 1e3:.2f} ms'}"
        )
    if sum(len(r) for r in summary["replicas"].values()) <= 16:
        print()
        print(replicas_table(summary))
    print(f"\nwrote {out}/summary.json, requests.csv, replicas.csv")
    return 0


def cmd_routers(args: argparse.Namespace) -> int:
    from sim.cli.tables import registry_text
    from sim.cluster.routers import DEFAULT_ROUTER, ROUTERS

    print(
        registry_text(
            ROUTERS, DEFAULT_ROUTER, "--router package.module:ClassName (the interface: sim.cluster.routers.Router)"
        )
    )
    return 0


def register(sub) -> None:
    from sim.allocators import REGISTRY
    from sim.cli.options import add_replay_options

    p = sub.add_parser("cluster", help="replay a trace through replicas behind a router (or prefill and decode pools)")
    add_replay_options(p)
    add_cluster_options(p)
    p.add_argument(
        "--allocator",
        default="paged",
        help=f"every replica's allocator: {', '.join(REGISTRY)} or package.module:ClassName (default: paged)",
    )
    p.set_defaults(func=cmd_cluster)
    p = sub.add_parser("routers", help="list the routers of `sim cluster`")
    p.set_defaults(func=cmd_routers)
