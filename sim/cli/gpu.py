"""`sim calibrate` and `sim validate`: the GPU harness (kernels.harness) behind the `sim` command.

Both need torch, triton and a CUDA GPU; they import `kernels` only inside the command, so `sim` itself keeps working
without torch. Without them they print why and exit with status 2. (`--device cpu` runs the Triton kernels in the
interpreter when TRITON_INTERPRET=1 is set: tiny models only, for tests.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sim.errors import UserError


def _need_gpu(device: str) -> None:
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"the GPU harness needs torch and triton ({exc.name} is not installed): "
            f"pip install -e '.[kernels]' on a machine with a CUDA GPU"
        ) from None
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise UserError("--device cpu needs TRITON_INTERPRET=1 (the Triton interpreter; tiny models only)")
        return
    if not torch.cuda.is_available():
        raise UserError("the GPU harness needs a CUDA GPU; torch sees none (torch.cuda.is_available() is False)")


def _harness_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layers",
        type=int,
        help="run only this many layers (quick checks; the KV budget stays the full "
        "model's, results of record use all layers)",
    )
    p.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="weights, activations and KV (default: bf16)"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="write the model's own K/V and skip the attention checks against the reference",
    )
    p.add_argument("--check-every", type=int, default=50, help="iterations between attention checks (default: 50)")
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="run every iteration eagerly instead of replaying CUDA graphs (for comparison; a profile "
        "holds only for the path it was calibrated with)",
    )
    p.add_argument(
        "--no-prefill-graphs",
        action="store_true",
        help="replay CUDA graphs for decode-only iterations only; iterations with prefill tokens run eagerly",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)


def _harness_options(args):
    from kernels.harness.replay import HarnessOptions

    return HarnessOptions(
        layers=args.layers,
        dtype=args.dtype,
        device=args.device,
        check=not args.no_check,
        check_every=args.check_every,
        seed=args.seed,
        time_limit_s=getattr(args, "time_limit", None),
        cuda_graphs=not args.no_cuda_graphs,
        prefill_graphs=not args.no_prefill_graphs,
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    _need_gpu(args.device)
    from kernels.harness.calibrate import CALIBRATION_GROUPED_ALLOCATOR, calibrate, has_kv_groups
    from kernels.harness.replay import GpuRun
    from kernels.harness.validate import environment
    from sim.cli.options import hardware_kwargs
    from sim.records.io import atomic_write, to_json
    from sim.serving.replay import ReplayOptions, validate_options
    from sim.units import format_bytes, parse_size

    # a model with KV-cache groups is timed on the grouped allocator's pages from the start (one pool on the GPU)
    hardware = hardware_kwargs(args)
    allocator = CALIBRATION_GROUPED_ALLOCATOR if has_kv_groups(hardware["model"]) else "paged"
    options = ReplayOptions(**hardware, allocator=allocator, scheduler=args.scheduler)
    validate_options(options)
    if args.kv_memory is None:  # big enough for the grid's larger decode points, well inside the GPU
        derived = options.budget().requested_bytes
        options.kv_memory = min(derived, parse_size(args.calibration_kv))
    harness = _harness_options(args)
    run = GpuRun.build(options, harness)
    env = environment()
    meta = {
        "model": options.model.name,
        "gpu": options.gpu.name,
        "layers": run.model.shapes.layers,
        "block_size": options.block_size,
        "scheduler": options.scheduler,
        "dtype": args.dtype,
        "kv_source": harness.check,
        "cuda_graphs": harness.cuda_graphs,
        "prefill_graphs": harness.cuda_graphs and harness.prefill_graphs,
        **env,
    }
    print(
        f"calibrate: {options.model.name} ({run.model.shapes.layers} layers) on {env.get('device')}, pool "
        f"{format_bytes(run.pool.nbytes)} ({run.budget.num_blocks:,} blocks)"
    )
    profile = calibrate(run, meta, repeats=args.repeats, passes=args.passes, budget_s=args.budget_s)
    out = args.out or f"profile-{options.model.name}-{options.gpu.name}.json"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    profile.path = out
    atomic_write(out, to_json(profile.to_dict()))
    f = profile.fit
    print(
        f"fit over {f['samples']} points: R^2 {f['r2']:.4f}, "
        f"median |error| {100 * f['median_abs_rel_error']:.1f}%, max |error| {100 * f['max_abs_rel_error']:.1f}% "
        f"(formula alone {100 * f['formula_median_abs_rel_error']:.1f}% "
        f"and {100 * f['formula_max_abs_rel_error']:.1f}%; decode correction from {f['decode_points_corrected']} "
        f"uniform decode points)"
    )
    print(f"wrote {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    if args.cost_model is not None:  # a missing or unreadable profile is reported as such, before the GPU check
        from sim.cost.profile import ProfileCostModel

        ProfileCostModel.load(args.cost_model)
    _need_gpu(args.device)
    import gc

    import torch

    from kernels.harness.calibrate import warm_up
    from kernels.harness.replay import GpuRun, gpu_replay
    from kernels.harness.validate import environment, format_record, headline, validation_record, write_record
    from sim.cli.options import print_header, replay_options
    from sim.records.io import atomic_write, to_json
    from sim.serving.replay import replay
    from sim.traces.readers import read_trace
    from sim.traces.tools import scale_trace, slice_trace

    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    desc = {"path": args.trace, "requests_in_file": len(trace)}
    if args.first:
        trace = slice_trace(trace, first=args.first)
        desc["first"] = args.first
    if args.scale:
        trace = scale_trace(trace, factor=args.scale)
        desc["rate_scale"] = args.scale
    desc.update(requests=len(trace), duration_s=trace.duration_s)
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    if not allocators:
        raise UserError("--allocators needs at least one allocator")
    if args.cost_model is None:
        print(
            "validate: no --cost-model given: the prediction uses the roofline (run `sim calibrate` first)",
            file=sys.stderr,
        )
    if args.cost_model is not None:
        import json

        with open(args.cost_model) as f:
            meta = json.load(f).get("meta", {})
        for name, on in (
            ("cuda_graphs", not args.no_cuda_graphs),
            ("prefill_graphs", not args.no_cuda_graphs and not args.no_prefill_graphs),
        ):
            cal = meta.get(name, False if name == "prefill_graphs" else None)
            if cal is not None and bool(cal) != on:
                print(
                    f"validate: warning: the profile was calibrated with {name}={cal}, this replay runs with "
                    f"{name}={on}",
                    file=sys.stderr,
                )
    out = args.out or os.path.join("reports", "validation", trace.name)
    os.makedirs(out, exist_ok=True)
    harness = _harness_options(args)
    env = environment()
    records = []
    run = None
    for i, name in enumerate(allocators):
        options = replay_options(args, name)
        if i == 0:
            print_header(trace, options)
            run = GpuRun.build(options, harness)
            print(f"validate: warm-up {warm_up(run):.1f} s" if harness.warmup else "")
        else:
            run.options = options
        t0 = time.perf_counter()
        pred = replay(trace, options)
        t1 = time.perf_counter()
        meas = gpu_replay(trace, run)
        t2 = time.perf_counter()
        rec = validation_record(desc, options, run, pred, meas, env)
        rec["wall_s"] = {"simulation": t1 - t0, "gpu_replay": t2 - t1}
        sub = os.path.join(out, name.replace(":", "-").replace("/", "-")) if len(allocators) > 1 else out
        write_record(sub, rec, meas, pred)
        records.append(rec)
        print(format_record(rec))
        print(f"  wrote {sub}/validation.json (simulation {t1 - t0:.1f} s, GPU replay {t2 - t1:.1f} s)", flush=True)
    if len(records) > 1:
        head = headline(records)
        atomic_write(os.path.join(out, "headline.json"), to_json(head))
        for pair, entry in head["ratios"].items():
            for fig, e in entry.items():
                fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
                print(
                    f"{pair} {fig}: predicted {fmt(e['predicted'])}, measured {fmt(e['measured'])}"
                    + ("" if e["rel_error"] is None else f" ({100 * e['rel_error']:+.1f}%)")
                )
    del run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return 0


def register(sub) -> None:
    from sim.cli.options import add_hardware_options, add_replay_options, positive_int, seed

    p = sub.add_parser(
        "calibrate", help="GPU: time a synthetic grid of iterations and write a cost profile (for --cost-model)"
    )
    add_hardware_options(p, gpu_default="h100-80gb")
    p.add_argument(
        "--scheduler",
        default="vllm-v1",
        metavar="NAME",
        help="the scheduler model whose default limits size the grid (largest batch, token budget; default: "
        "%(default)s)",
    )
    p.add_argument("--calibration-kv", default="32GiB", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=positive_int, default=2, help="timed runs per visit of a grid point (default: 2)")
    p.add_argument(
        "--passes", type=positive_int, default=3, help="visits of the whole grid, in shuffled order (default: 3)"
    )
    p.add_argument("--budget-s", type=float, help="stop measuring new grid points after this many seconds")
    p.add_argument("--seed", type=seed, default=0, help="random seed, an integer in [0, 2^64) (default: 0)")
    p.add_argument("--out", help="profile file to write (default: profile-<model>-<gpu>.json)")
    _harness_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "validate", help="GPU: replay a trace on the GPU and beside the calibrated simulation; write validation.json"
    )
    add_replay_options(p)
    p.add_argument(
        "--allocators",
        default="paged",
        help="comma-separated allocators, each replayed on the GPU with the same pool (default: paged); "
        "several also write headline.json (ratios to paged)",
    )
    p.add_argument("--first", type=positive_int, help="only the first N requests of the trace")
    p.add_argument("--scale", type=float, help="multiply the arrival rate by this factor (after --first)")
    p.add_argument("--time-limit", type=float, help="stop a GPU replay after this many seconds (marked truncated)")
    _harness_args(p)
    p.set_defaults(func=cmd_validate)
