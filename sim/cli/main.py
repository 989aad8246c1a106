"""The `sim` command. Thin: it parses options, calls the library, prints, and maps errors to exit status 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sim.allocators import COMPARED_BY_DEFAULT, REGISTRY
from sim.cli.options import add_metric_percentiles, add_replay_options, print_header, replay_options
from sim.cli.tables import (
    concurrency_lines,
    gpus_json,
    gpus_table,
    groups_table,
    models_json,
    models_table,
    registry_text,
    summary_table,
)
from sim.errors import UserError
from sim.hardware.design_capacity import DesignCapacity, design_capacity, full_attention_bytes_per_token
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS
from sim.progress import ProgressBar
from sim.records.io import atomic_write, to_json, with_run_info, write_replay
from sim.records.rundir import describe_os_error, kvsim_version, open_run_dir, rescue_dir, set_command
from sim.serving.replay import ReplayOptions, replay
from sim.serving.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from sim.traces.readers import read_trace
from sim.workers import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, handle_signals

# Modules that add subcommands: each defines register(subparsers).
PLUGIN_COMMANDS: list[str] = [
    "sim.cli.trace",
    "sim.cli.check",
    "sim.cli.report",
    "sim.cli.gpu",
    "sim.cli.external",
    "sim.cli.cluster",
]


def run_one(trace, options: ReplayOptions, quiet: bool, label: str):
    bar = ProgressBar(label, enabled=False if quiet else None)
    try:
        return replay(trace, options, progress=bar)
    finally:
        bar.close()


def save_or_rescue(directory: str, stem: str, save, save_summaries) -> None:
    """save(directory); if the output location fails (after the work is done), save into a new directory under the
    system temp dir instead, or at least the summaries, and raise a UserError that names both places."""
    try:
        save(directory)
        return
    except OSError as exc:
        failure = describe_os_error(exc, directory)
    try:
        rescue = rescue_dir(stem)
    except OSError as exc:
        raise UserError(f"{failure}; nothing could be saved elsewhere either ({describe_os_error(exc)})") from None
    try:
        save(rescue)
        what = "the results were written"
    except OSError:
        try:
            save_summaries(rescue)
            what = "the summary was written"
        except OSError as exc:
            message = f"{failure}; nothing could be saved in {rescue} either ({describe_os_error(exc)})"
            raise UserError(message) from None
    raise UserError(f"{failure}; {what} to {rescue} instead")


def cmd_replay(args: argparse.Namespace) -> int:
    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    options = replay_options(args, args.allocator)
    print_header(trace, options)
    stem = f"{trace.name}-{os.path.basename(args.allocator).replace(':', '-')}"
    with open_run_dir(args.out, stem, args.force) as run:
        out = run.path
        result = run_one(trace, options, args.quiet, args.allocator)

        def summary_only(d: str) -> None:
            atomic_write(os.path.join(d, "summary.json"), to_json(with_run_info(result.summary)))

        save_or_rescue(
            out, stem, lambda d: write_replay(d, result, trace.request_id, args.metric_percentiles), summary_only
        )
    print()
    print(summary_table([result.summary]))
    print(f"\nwrote {out}/summary.json, steps.csv, requests.csv")
    return 0


def design_of(trace, options: ReplayOptions) -> tuple[DesignCapacity, int] | None:
    """The model's KV design against full-attention KV at the trace's mean request length (prompt + output, rounded
    up), in the comparison's KV memory; with the full-attention bytes per token. None for an empty trace."""
    if not len(trace):
        return None
    tokens = int(-(-int((trace.prompt_tokens + trace.output_tokens).sum()) // len(trace)))
    budget = options.budget()
    design = design_capacity(options.model, budget.requested_bytes, budget.block_size, tokens, options.tp)
    return design, full_attention_bytes_per_token(options.model, options.tp)


def cmd_compare(args: argparse.Namespace) -> int:
    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    if not allocators:
        raise UserError("--allocators needs at least one allocator")
    if len(set(allocators)) != len(allocators):
        raise UserError("--allocators names an allocator twice")
    options = [replay_options(args, a, family_options_only=True) for a in allocators]
    import contextlib

    # with --json, stdout holds the JSON alone: the other lines go to stderr
    human = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with human:
        print_header(trace, options[0])
    stem = f"{trace.name}-compare"
    with open_run_dir(args.out, stem, args.force) as run:
        out = run.path
        results = []
        for opt in options:
            result = run_one(trace, opt, args.quiet, opt.allocator)
            results.append((opt.allocator.replace(":", "-").replace("/", "-"), result))
            # each allocator's files as soon as it is done; a failure to write them is handled below, with all
            try:
                sub = os.path.join(out, results[-1][0])
                os.makedirs(sub, exist_ok=True)
                write_replay(sub, result, trace.request_id, args.metric_percentiles)
            except OSError:
                pass
        summaries = [with_run_info(r.summary) for _, r in results]

        def save(d: str) -> None:
            for name, result in results:
                if d != out or not os.path.exists(os.path.join(d, name, "summary.json")):
                    os.makedirs(os.path.join(d, name), exist_ok=True)
                    write_replay(os.path.join(d, name), result, trace.request_id, args.metric_percentiles)
            atomic_write(os.path.join(d, "compare.json"), to_json(summaries))

        def summaries_only(d: str) -> None:
            atomic_write(os.path.join(d, "compare.json"), to_json(summaries))

        save_or_rescue(out, stem, save, summaries_only)
    if args.json:  # the summaries as compare.json holds them
        print(to_json(summaries))
        print(f"wrote {out}/compare.json and one directory per allocator", file=sys.stderr)
        return 0
    print()
    print(summary_table([r.summary for _, r in results]))
    # allocators with KV-cache groups: each group's figures, and what the groups held beyond full-attention KV
    plain = [r.summary for _, r in results]
    for text in (groups_table(plain), concurrency_lines(plain, design_of(trace, options[0]))):
        if text:
            print()
            print(text)
    print(f"\nwrote {out}/compare.json and one directory per allocator")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    print(models_json(MODELS.values()) if args.json else models_table(MODELS.values()))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    print(gpus_json(GPUS.values()) if args.json else gpus_table(GPUS.values()))
    return 0


def cmd_allocators(args: argparse.Namespace) -> int:
    yours = "--allocator package.module:ClassName (a subclass of sim.allocators.base.KVAllocator)"
    print(registry_text(REGISTRY, None, yours))
    return 0


def cmd_schedulers(args: argparse.Namespace) -> int:
    yours = "--scheduler package.module:ClassName (the interface: sim.serving.schedulers.base.Scheduler)"
    print(registry_text(SCHEDULERS, DEFAULT_SCHEDULER, yours))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sim", description="KV-cache capacity planning for LLM serving.")
    parser.add_argument("--version", action="version", version=f"sim (kvsim) {kvsim_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("replay", help="replay a trace through one KV allocator")
    add_replay_options(p)
    p.add_argument(
        "--allocator",
        default="paged",
        help=f"allocator: {', '.join(REGISTRY)} or package.module:ClassName (default: paged)",
    )
    add_metric_percentiles(p)
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("compare", help="replay a trace through several allocators, side by side")
    add_replay_options(p)
    add_metric_percentiles(p)
    p.add_argument(
        "--allocators",
        default=",".join(COMPARED_BY_DEFAULT),
        help=f"comma-separated allocators (default: {','.join(COMPARED_BY_DEFAULT)}; "
        f"registered: {', '.join(REGISTRY)})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summaries (as compare.json) to stdout as JSON instead of the table; other lines to stderr",
    )
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("models", help="list model presets")
    p.add_argument("--json", action="store_true", help="print every field of each preset as JSON")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("gpus", help="list GPU presets")
    p.add_argument("--json", action="store_true", help="print every field of each preset as JSON")
    p.set_defaults(func=cmd_gpus)
    sub.add_parser("allocators", help="list registered allocators").set_defaults(func=cmd_allocators)
    sub.add_parser("schedulers", help="list registered scheduler models").set_defaults(func=cmd_schedulers)
    for module_name in PLUGIN_COMMANDS:  # subcommands that live in their own modules, each with register(sub)
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_command(sys.argv[1:] if argv is None else argv)
    try:
        with handle_signals():  # SIGTERM takes Ctrl-C's clean-up path
            return args.func(args)
    except UserError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("\nsim: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("\nsim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as exc:  # an output location that failed: a message, not a traceback
        print(f"sim: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
