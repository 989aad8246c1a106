"""`sim trace generate|stats|slice|scale`: make, inspect and cut traces. Thin: the work is in sim.traces.generate and
sim.traces.tools."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sim.cli.options import non_negative_int, option_duration, positive_float, positive_int, seed
from sim.errors import UserError
from sim.traces.generate import LENGTHS_HELP, MAX_GENERATED_REQUESTS, generate
from sim.traces.model import Trace
from sim.traces.readers import READERS, read_trace
from sim.traces.tools import format_stats, scale_trace, slice_trace, trace_stats
from sim.traces.writers import write_trace


def add_read_options(p: argparse.ArgumentParser, rate_flag: str = "--rate") -> None:
    """Options that say how to read a trace file (shared by the trace subcommands)."""
    p.add_argument("trace", help="trace file (format detected from its header or first JSON record)")
    p.add_argument("--format", choices=sorted(READERS), help="force the trace format")
    p.add_argument(
        rate_flag,
        dest="rate",
        type=positive_float,
        metavar="REQ_PER_S",
        help="length-only traces: requests/s of the Poisson arrivals to generate",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of those arrivals, in [0, 2^64) (default: 0)")
    p.add_argument(
        "--model-filter", metavar="MODEL", help="BurstGPT traces: keep only this model's rows (e.g. ChatGPT, GPT-4)"
    )


def load(args: argparse.Namespace) -> Trace:
    return read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="file to write: native CSV, or Mooncake JSONL when it ends in .jsonl; '-' for stdout",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _write(trace: Trace, args: argparse.Namespace) -> None:
    path = args.output
    if path != "-" and os.path.exists(path) and not args.force:
        raise UserError(f"{path} exists; use --force to overwrite it")
    if path != "-" and os.path.isdir(path):
        raise UserError(f"{path} is a directory; give a file name")
    written = write_trace(trace, path)
    message = (
        f"wrote {path}: {len(trace):,} requests over {trace.duration_s:,.1f} s "
        f"({'Mooncake JSONL' if written == 'mooncake' else 'native CSV'})"
    )
    print(message, file=sys.stderr if path == "-" else sys.stdout)


def _seconds(text: str, option: str) -> float:
    return option_duration(option, text)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.count is None and args.duration is None:
        raise UserError("give --count N (requests) or --duration D (e.g. 10min)")
    if args.count is not None and args.duration is not None:
        raise UserError("give --count or --duration, not both")
    duration = _seconds(args.duration, "--duration") if args.duration is not None else None
    trace = generate(
        args.lengths,
        rate=args.rate,
        count=args.count,
        duration_s=duration,
        arrival_process=args.arrivals,
        cv=args.cv,
        seed=args.seed,
        prefix_groups=args.prefix_groups,
        prefix_tokens=args.prefix_tokens,
        prefix_fraction=args.prefix_fraction,
        n=args.n,
        beam_width=args.beam_width,
        path=args.output,
    )
    if len(trace) == 0:
        raise UserError("no request arrives within --duration; raise --rate or --duration")
    _write(trace, args)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    stats = trace_stats(load(args))
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
    return 0


def cmd_slice(args: argparse.Namespace) -> int:
    if args.start is None and args.end is None and args.first is None and not args.skip:
        raise UserError("say what to keep: --start/--end (a time window), --first N and/or --skip N")
    trace = load(args)
    out = slice_trace(
        trace,
        start_s=_seconds(args.start, "--start") if args.start is not None else None,
        end_s=_seconds(args.end, "--end") if args.end is not None else None,
        first=args.first,
        skip=args.skip,
        rebase=not args.keep_times,
    )
    _write(out, args)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    out = scale_trace(load(args), factor=args.factor, rate=args.to_rate)
    _write(out, args)
    return 0


def register(sub) -> None:
    trace = sub.add_parser("trace", help="generate, inspect, slice and scale traces")
    tsub = trace.add_subparsers(dest="trace_command", required=True, metavar="TRACE_COMMAND")

    p = tsub.add_parser(
        "generate",
        help="a seeded synthetic trace (native CSV)",
        description="Write a seeded synthetic trace. Arrivals: Poisson, or gamma with --cv; lengths: "
        "a named distribution or resampled from a trace. Example: sim trace generate "
        "--lengths sharegpt --rate 2 --count 1000 --seed 0 -o sharegpt-1k.csv",
    )
    p.add_argument("--lengths", default="sharegpt", help=f"length distribution: {LENGTHS_HELP} (default: sharegpt)")
    p.add_argument(
        "--arrivals", choices=["poisson", "gamma"], default="poisson", help="arrival process (default: poisson)"
    )
    p.add_argument(
        "--cv",
        type=positive_float,
        help="gamma arrivals: coefficient of variation of the gaps (burstiness; 1 = Poisson)",
    )
    p.add_argument("--rate", type=positive_float, default=1.0, help="mean requests/s (default: 1)")
    p.add_argument("--count", type=positive_int, help=f"number of requests (at most {MAX_GENERATED_REQUESTS:,})")
    p.add_argument("--duration", help="generate arrivals for this long instead, e.g. 600 or 10min")
    p.add_argument("--seed", type=seed, default=0, help="random seed, an integer in [0, 2^64) (default: 0)")
    p.add_argument(
        "--prefix-groups",
        type=non_negative_int,
        default=0,
        help="number of shared-prefix groups (with --prefix-tokens)",
    )
    p.add_argument(
        "--prefix-tokens",
        type=non_negative_int,
        default=0,
        help="tokens of each group's shared prefix, put in front of the sampled prompt",
    )
    p.add_argument(
        "--prefix-fraction",
        type=positive_float,
        default=1.0,
        help="fraction of requests that join a group (default: 1)",
    )
    p.add_argument("--n", type=positive_int, help="add an n column (parallel samples per request)")
    p.add_argument("--beam-width", type=positive_int, help="add a beam_width column")
    _add_output(p)
    p.set_defaults(func=cmd_generate)

    p = tsub.add_parser("stats", help="rows, duration, rate, burstiness, length percentiles, shareable prefixes")
    add_read_options(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_stats)

    p = tsub.add_parser(
        "slice",
        help="a time window and/or the first N requests of a trace",
        description="Keep the requests arriving in [--start, --end) (seconds after the first arrival), "
        "then drop --skip of them and keep --first. Times are shifted so the window starts "
        "at 0 unless --keep-times.",
    )
    add_read_options(p)
    p.add_argument("--start", help="window start after the first arrival, e.g. 600 or 10min")
    p.add_argument("--end", help="window end (exclusive) after the first arrival")
    p.add_argument("--first", type=positive_int, metavar="N", help="keep the first N requests (of the window)")
    p.add_argument("--skip", type=non_negative_int, default=0, metavar="N", help="drop the first N requests first")
    p.add_argument("--keep-times", action="store_true", help="keep the original arrival times")
    _add_output(p)
    p.set_defaults(func=cmd_slice)

    p = tsub.add_parser("scale", help="multiply a trace's arrival rate (gaps divided by the factor)")
    add_read_options(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--factor", type=positive_float, help="arrival-rate multiplier, e.g. 2 = twice as fast")
    group.add_argument(
        "--to-rate", type=positive_float, metavar="REQ_PER_S", help="target mean arrival rate, (rows - 1) / duration"
    )
    _add_output(p)
    p.set_defaults(func=cmd_scale)
