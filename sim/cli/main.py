"""The `sim` command. Thin: it parses options, calls the library, prints, and maps errors to exit status 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sim.allocators import REGISTRY
from sim.cli.options import positive_int
from sim.cli.progress import ProgressBar
from sim.cli.tables import summary_table
from sim.cost.roofline import DEFAULT_STEP_OVERHEAD_S
from sim.errors import UserError
from sim.hardware.gpus import GPUS, resolve_gpu
from sim.hardware.models import MODELS, resolve_model
from sim.records.io import atomic_write, prepare_dir, to_json, write_replay
from sim.serving.replay import ReplayOptions, replay
from sim.traces.readers import READERS, read_trace
from sim.units import format_bytes, parse_duration, parse_size

# Modules that add subcommands: each defines register(subparsers).
PLUGIN_COMMANDS: list[str] = ["sim.cli.trace", "sim.cli.check", "sim.cli.report", "sim.cli.gpu"]


def _add_replay_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="trace file (format detected from its header or first JSON record)")
    p.add_argument("--format", choices=sorted(READERS), help="force the trace format")
    p.add_argument(
        "--rate",
        type=float,
        metavar="REQ_PER_S",
        help="length-only traces: requests/s of the Poisson arrivals to generate",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice: generated arrivals, the beam model (default: 0)",
    )
    p.add_argument(
        "--model-filter", metavar="MODEL", help="BurstGPT traces: keep only this model's rows (e.g. ChatGPT, GPT-4)"
    )
    p.add_argument(
        "--model",
        default="llama-2-7b",
        help="model preset (see `sim models`) or dimensions 'layers=..,kv_heads=..,head_size=..,"
        "params=..,max_len=..[,heads=..,hidden=..,intermediate=..,vocab=..,kv_dtype=..]' "
        "(default: llama-2-7b)",
    )
    p.add_argument("--gpu", default="a100-80gb", help="GPU preset (see `sim gpus`; default: a100-80gb)")
    p.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block (default: 16)")
    p.add_argument("--kv-memory", help="KV cache size per GPU, e.g. 12GiB (default: derived from the GPU)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of GPU memory the engine may use when deriving the KV size (default: 0.9)",
    )
    p.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel GPUs (default: 1)")
    p.add_argument("--max-model-len", type=positive_int, help="override the model's max length (tokens)")
    p.add_argument("--max-num-seqs", type=positive_int, default=256, help="sequences per iteration (default: 256)")
    p.add_argument(
        "--max-num-batched-tokens",
        type=positive_int,
        help="prompt tokens prefilled per iteration (default: max(max model length, 2048))",
    )
    p.add_argument(
        "--address-space",
        choices=["buddy", "first-fit"],
        help="contiguous allocators: the address-space policy that places reservations, buddy or first-fit (default: buddy)",
    )
    p.add_argument(
        "--step-overhead",
        default=f"{DEFAULT_STEP_OVERHEAD_S * 1000:g}ms",
        help="fixed time per iteration in the roofline cost model (default: %(default)s)",
    )
    p.add_argument(
        "--cost-model",
        metavar="FILE",
        help="iteration times from a calibration profile written by `sim calibrate` on a GPU, instead "
        "of the roofline (--step-overhead does not apply then)",
    )
    p.add_argument(
        "--no-sharing",
        action="store_true",
        help="paged allocators: share nothing (forks copy every block, prefixes are not shared) — the "
        "counterfactual that sharing.saved_fraction is measured against",
    )
    p.add_argument(
        "--beam-replace-prob",
        type=float,
        default=0.3,
        help="beam search model: probability that a beam is dropped and replaced by a fork of a "
        "surviving beam at each step (default: 0.3)",
    )
    p.add_argument(
        "--no-fast-forward",
        action="store_true",
        help="simulate every iteration one by one (the results are identical; this is slower)",
    )
    p.add_argument("--out", help="output directory (default: a new directory under runs/)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace, allocator: str) -> ReplayOptions:
    model = resolve_model(args.model, args.max_model_len)
    return ReplayOptions(
        model=model,
        gpu=resolve_gpu(args.gpu),
        allocator=allocator,
        block_size=args.block_size,
        kv_memory=parse_size(args.kv_memory) if args.kv_memory else None,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tp=args.tp,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        address_space=args.address_space,
        step_overhead_s=parse_duration(args.step_overhead),
        sharing=not args.no_sharing,
        beam_replace_prob=args.beam_replace_prob,
        seed=args.seed,
        fast_forward=not args.no_fast_forward,
        cost_model=getattr(args, "cost_model", None),
    )


def _header(trace, options: ReplayOptions) -> None:
    budget = options.budget()
    print(f"trace: {trace.path} ({trace.format}, {len(trace):,} requests over {trace.duration_s:,.1f} s)")
    for note in trace.notes:
        print(f"trace note: {note}")
    print(
        f"model: {options.model.name} ({options.model.kv_bytes_per_token(options.tp):,} KV bytes per token"
        f"{f' per GPU, tp={options.tp}' if options.tp > 1 else ''}), GPU: {options.gpu.name}"
    )
    if budget.source == "derived":
        b = budget.breakdown
        print(
            f"KV budget: {format_bytes(b['gpu_memory'])} x {options.gpu_memory_utilization:g} - weights "
            f"{format_bytes(b['weights'])} - activations {format_bytes(b['activations'])} - runtime "
            f"{format_bytes(b['runtime'])} = {format_bytes(b['kv'])}"
        )
    print(budget.describe(options.model))


def _run_one(trace, options: ReplayOptions, quiet: bool, label: str):
    bar = ProgressBar(label, enabled=False if quiet else None)
    try:
        return replay(trace, options, progress=bar)
    finally:
        bar.close()


def cmd_replay(args: argparse.Namespace) -> int:
    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    options = _options(args, args.allocator)
    _header(trace, options)
    out = prepare_dir(args.out, f"{trace.name}-{os.path.basename(args.allocator).replace(':', '-')}", args.force)
    result = _run_one(trace, options, args.quiet, args.allocator)
    write_replay(out, result, trace.request_id)
    print()
    print(summary_table([result.summary]))
    print(f"\nwrote {out}/summary.json, steps.csv, requests.csv")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    if not allocators:
        raise UserError("--allocators needs at least one allocator")
    if len(set(allocators)) != len(allocators):
        raise UserError("--allocators names an allocator twice")
    options = [_options(args, a) for a in allocators]
    _header(trace, options[0])
    out = prepare_dir(args.out, f"{trace.name}-compare", args.force)
    results = []
    for opt in options:
        result = _run_one(trace, opt, args.quiet, opt.allocator)
        sub = os.path.join(out, opt.allocator.replace(":", "-").replace("/", "-"))
        os.makedirs(sub, exist_ok=True)
        write_replay(sub, result, trace.request_id)
        results.append(result)
    summaries = [r.summary for r in results]
    atomic_write(os.path.join(out, "compare.json"), to_json(summaries))
    print()
    print(summary_table(summaries))
    print(f"\nwrote {out}/compare.json and one directory per allocator")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    print(
        f"{'name':<12} {'layers':>6} {'q heads':>7} {'kv heads':>8} {'head':>5} {'kv dtype':>8} "
        f"{'params':>8} {'max len':>8} {'KV B/token':>11}"
    )
    for m in MODELS.values():
        print(
            f"{m.name:<12} {m.num_layers:>6} {m.num_q_heads:>7} {m.num_kv_heads:>8} {m.head_size:>5} "
            f"{m.kv_dtype:>8} {m.num_params / 1e9:>7.2f}B {m.max_model_len:>8,} {m.kv_bytes_per_token():>11,}"
        )
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    print(f"{'name':<10} {'memory':>10} {'HBM TB/s':>9} {'bf16 TFLOP/s':>13}  source")
    for g in GPUS.values():
        print(
            f"{g.name:<10} {format_bytes(g.memory_bytes):>10} {g.hbm_bandwidth / 1e12:>9.3f} "
            f"{g.bf16_flops / 1e12:>13.1f}  {g.source}"
        )
    return 0


def cmd_allocators(args: argparse.Namespace) -> int:
    width = max(len(n) for n in REGISTRY)
    for name, cls in REGISTRY.items():
        print(f"{name:<{width}}  {cls.description}")
    print("\nYour own: --allocator package.module:ClassName (a subclass of sim.allocators.base.KVAllocator)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sim", description="KV-cache capacity planning for LLM serving.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("replay", help="replay a trace through one KV allocator")
    _add_replay_options(p)
    p.add_argument(
        "--allocator",
        default="paged",
        help=f"allocator: {', '.join(REGISTRY)} or package.module:ClassName (default: paged)",
    )
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("compare", help="replay a trace through several allocators, side by side")
    _add_replay_options(p)
    p.add_argument(
        "--allocators", default=",".join(REGISTRY), help="comma-separated allocators (default: all registered)"
    )
    p.set_defaults(func=cmd_compare)
    sub.add_parser("models", help="list model presets").set_defaults(func=cmd_models)
    sub.add_parser("gpus", help="list GPU presets").set_defaults(func=cmd_gpus)
    sub.add_parser("allocators", help="list registered allocators").set_defaults(func=cmd_allocators)
    for module_name in PLUGIN_COMMANDS:  # subcommands that live in their own modules, each with register(sub)
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
