"""`sim report` (capacity-planning report) and `sim sweep` (a grid of replays). Thin: the work is in sim.report.

Long file: the two commands' argument parsing and their option checks (GPUs, prices, routers, host tiers, output
locations) sit together because `sim sweep` shares the report's option readers; each function is short."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys

from sim.cli.options import positive_float, positive_int
from sim.errors import UserError
from sim.records.rundir import check_writable

DEFAULT_GPU = "a100-80gb"  # as every command's --gpu


def _int_list(text: str) -> list[int]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if item:
            values.append(positive_int(item))
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a block size is given twice in {text!r}")
    return values


def gpu_items(values: list[str] | None) -> list[str]:
    """The GPUs of `--gpus` values: each value is `;`-separated; a part with no `=` (presets, TOML files) may also
    list several comma-separated, a part with `=` is one dimension string (its commas are its own)."""
    items: list[str] = []
    for value in values or []:
        for part in value.split(";"):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                items.append(part)
            else:
                items += [x.strip() for x in part.split(",") if x.strip()]
    return items


def resolve_gpus(args: argparse.Namespace) -> list:
    """The report's GPUs (--gpu, or --gpus), checked: exit 2 on an unknown one or two of one name."""
    from sim.hardware.gpus import resolve_gpu

    if args.gpus is not None and args.gpu is not None:
        raise UserError("give --gpu (one GPU) or --gpus (several), not both")
    if args.gpus is None:
        return [resolve_gpu(args.gpu or DEFAULT_GPU)]
    items = gpu_items(args.gpus)
    if not items:
        raise UserError("--gpus needs at least one GPU")
    gpus = []
    for item in items:
        try:
            gpus.append(resolve_gpu(item))
        except UserError as exc:
            raise UserError(f"--gpus: {exc}") from None
    names = [g.name.lower() for g in gpus]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--gpus names {twice[0]} twice (GPUs given by dimensions or TOML files need distinct name=..)")
    return gpus


def resolve_prices(items: list[str] | None, gpus: list) -> dict[str, float]:
    """--price GPU=DOLLARS_PER_HOUR -> {GPU name of the report: price}; exit 2 for a GPU not in the report."""
    from sim.hardware.gpus import GPU_ALIASES
    from sim.report.plan import parse_prices

    by_name = {g.name.lower(): g.name for g in gpus}
    prices = {}
    for given, price in parse_prices(items).items():
        key = GPU_ALIASES.get(given, given)
        if key not in by_name:
            raise UserError(
                f"--price {given}=...: {given} is not a GPU of this report (GPUs: {', '.join(by_name.values())})"
            )
        if by_name[key] in prices:
            raise UserError(f"--price gives a price for {by_name[key]} twice")
        prices[by_name[key]] = price
    return prices


def _command_line() -> str:
    return "sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@contextlib.contextmanager
def _owned_data_dir(html_path: str):
    """Create the report's data directory, lock it for this run and check it can be written; yields it."""
    from sim.records.rundir import open_run_dir
    from sim.report.html import data_dir_for

    run = open_run_dir(data_dir_for(html_path), "report", force=True, resume=True)
    try:
        check_writable(os.path.dirname(os.path.abspath(html_path)))
        yield run.path
    finally:
        run.close()


def _save_or_rescue(path: str, save, save_less) -> None:
    """save(path) (a file path); if the output location fails after the work, save under the system temp dir."""
    from sim.records.rundir import describe_os_error, rescue_dir

    try:
        save(path)
        return
    except OSError as exc:
        failure = describe_os_error(exc, path)
    rescue = rescue_dir(os.path.splitext(os.path.basename(path))[0])
    target = os.path.join(rescue, os.path.basename(path))
    try:
        save(target)
    except OSError:
        try:
            save_less(target)
        except OSError as exc:
            message = f"{failure}; nothing could be saved in {rescue} either ({describe_os_error(exc)})"
            raise UserError(message) from None
    raise UserError(f"{failure}; the results were written to {target} instead")


def parse_routers(text: str) -> list[str]:
    """--routers: comma-separated router names or classes, or 'none' (each checked)."""
    from sim.cluster.routers import resolve_router

    names = [r.strip() for r in text.split(",") if r.strip()]
    if names == ["none"]:
        return []
    if not names:
        raise UserError("--routers needs a router (see `sim routers`) or 'none'")
    if len(set(names)) != len(names):
        raise UserError("--routers names a router twice")
    for name in names:
        resolve_router(name)
    return names


def cmd_report(args: argparse.Namespace) -> int:
    from sim.cli.options import replay_options
    from sim.progress import StatusLine
    from sim.report.browser import find_chromium, screenshot
    from sim.report.build import ReportInputs, build_report, default_jobs
    from sim.report.capacity import trace_rate
    from sim.report.content import headline_text
    from sim.report.html import data_dir_for, write_outputs
    from sim.report.page import build_page
    from sim.report.plan import check_max_utilization, format_usd
    from sim.report.slo import parse_slos
    from sim.serving.replay import host_tier_capable, validate_options
    from sim.traces.readers import read_trace
    from sim.traces.tools import slice_trace
    from sim.units import parse_duration

    output = args.output or (os.path.join(args.out, "report.html") if args.out else "report.html")
    if os.path.isdir(output):
        raise UserError(f"-o {output} is a directory; give a file name such as report.html")
    if os.path.exists(output) and not args.force:
        raise UserError(f"{output} exists; use --force to overwrite it")
    slos = parse_slos(args.slo)
    gpus = resolve_gpus(args)
    prices = resolve_prices(args.price, gpus)
    max_utilization = check_max_utilization(args.max_utilization)
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON alone

    def say(*parts) -> None:
        print(*parts, file=out)

    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    if not allocators:
        raise UserError("--allocators needs at least one allocator")
    if len(set(allocators)) != len(allocators):
        raise UserError("--allocators names an allocator twice")
    block_sizes = args.block_sizes or [args.block_size]
    trace = read_trace(args.trace, args.format, rate=args.rate, seed=args.seed, model_filter=args.model_filter)
    note = []
    if args.first is not None or args.duration is not None:
        end = parse_duration(args.duration) if args.duration is not None else None
        full = len(trace)
        trace = slice_trace(trace, end_s=end, first=args.first)
        if end is not None:
            note.append(f"requests arriving in the first {end:g} s")
        if args.first is not None:
            note.append(f"the first {args.first:,}")
        note = [
            f"{' and '.join(note)} of the trace's {full:,} requests ({len(trace):,} requests over "
            f"{trace.duration_s:,.1f} s)"
        ]
    if len(gpus) > 1 and args.cost_model:
        raise UserError("--cost-model is a profile calibrated on one GPU; it cannot serve several --gpus")
    args.gpu = args.gpu or DEFAULT_GPU
    hosts = host_memories(args.host_kv_memories, args.host_kv_memory)
    if hosts and not args.host_kv_memory:  # the base options carry the link and preemption of the host tiers
        args.host_kv_memory = str(next(h for h in hosts if h is not None))
    first = first_capable(allocators) if args.host_kv_memory else allocators[0]
    base = dataclasses.replace(replay_options(args, first), gpu=gpus[0])
    for h in hosts:  # every host tier compared, checked before any process starts
        if h is not None:
            validate_options(dataclasses.replace(base, allocator=first_capable(allocators), host_kv_memory=h))
    for g in gpus:  # fail early on an impossible budget, before any process starts
        for b in block_sizes:
            try:
                dataclasses.replace(base, gpu=g, block_size=b).budget()
            except UserError as exc:
                raise UserError(f"{g.name}: {exc}" if len(gpus) > 1 else str(exc)) from None
    native = trace_rate(trace)
    target = args.target_rate if args.target_rate is not None else native
    inputs = ReportInputs(
        trace,
        base,
        allocators,
        block_sizes,
        slos,
        target,
        args.precision,
        args.start_rate,
        note[0] if note else "",
        args.title or "",
        gpus,
        prices,
        max_utilization,
        parse_routers(args.routers),
        hosts,
    )
    jobs = args.jobs or default_jobs()
    per_allocator = [len(hosts) if hosts and host_tier_capable(a) else 1 for a in allocators]
    n_configs = len(gpus) * len(block_sizes) * sum(per_allocator)
    say(
        f"trace: {trace.path} ({len(trace):,} requests over {trace.duration_s:,.1f} s, {native:.4g} req/s)"
        + (f"; {note[0]}" if note else "")
    )
    priced = [f"{g.name} {format_usd(inputs.price(g))}/h" for g in gpus if inputs.price(g) is not None]
    say(
        f"model: {base.model.name}, GPU{'s' if len(gpus) > 1 else ''}: {', '.join(g.name for g in gpus)}, "
        f"tp={base.tp}; SLOs: {', '.join(s.describe() for s in slos)}; target {target:g} req/s"
        + (f", max utilization {max_utilization:g}" if max_utilization < 1 else "")
        + (f"; prices: {', '.join(priced)}" if priced else "")
    )
    say(f"searching {n_configs} configuration(s) to {100 * args.precision:g}% on {min(jobs, n_configs)} process(es)...")
    status = StatusLine(enabled=False if args.quiet else None)
    with _owned_data_dir(output):  # checked writable and locked before the work
        data = build_report(inputs, jobs=jobs, status=status, validation_root=args.validation_dir)
        page_html, files = build_page(data, _command_line())

        def save(html_path: str) -> None:
            if os.path.exists(html_path):  # never the old page beside the new data
                os.unlink(html_path)
            write_outputs(html_path, page_html, files)

        def page_only(html_path: str) -> None:
            write_outputs(html_path, page_html, {"report.json": files.get("report.json", "{}")})

        _save_or_rescue(output, save, page_only)
        directory = data_dir_for(output)
    rec = data.recommendation
    if args.json:
        print(files["report.json"])  # the same bytes as <stem>-data/report.json
    else:
        print()
        print(results_table(data))
    say()
    say(headline_text(data))
    say(f"{data.probes_run} replays in {data.wall_s:,.1f} s")
    size = os.path.getsize(output)
    data_path = os.path.join(os.path.dirname(output), os.path.basename(directory))
    say(f"wrote {output} ({size / 1e6:.1f} MB) and {data_path}/ (CSV and JSON of every chart)")
    if args.screenshot:
        if find_chromium() is None:
            raise UserError("--screenshot needs Chromium (Debian: apt-get install chromium)")
        screenshot(output, args.screenshot, height=args.screenshot_height)
        say(f"wrote {args.screenshot}")
    assert data_dir_for(output) == directory
    return 0 if rec is not None else 1  # 1: nothing meets the SLOs (the report is still written)


def host_memories(text: str | None, single: str | None) -> list[int | None]:
    """`--host-kv-memories`: bytes per GPU, None for 0 (GPU only), in order; [] when not given. A UserError on a
    bad size, a repeated one, or together with --host-kv-memory."""
    if text is None:
        return []
    if single:
        raise UserError("give --host-kv-memory (one host tier) or --host-kv-memories (several), not both")
    from sim.cli.options import option_size

    values: list[int | None] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        size = None if item in ("0", "none") else option_size("--host-kv-memories", item)
        if size in values:
            raise UserError(f"--host-kv-memories gives {item} twice")
        values.append(size)
    if not any(v is not None for v in values):
        raise UserError("--host-kv-memories needs at least one host tier size (0 alone is GPU only: leave it out)")
    return values


def first_capable(allocators: list[str]) -> str:
    """The first allocator that takes a host tier; a UserError when none does."""
    from sim.serving.replay import host_tier_capable

    for a in allocators:
        if host_tier_capable(a):
            return a
    raise UserError(
        f"--host-kv-memories needs a paged allocator in --allocators (paged, paged-prefix-cache), got "
        f"{', '.join(allocators)}"
    )


def results_table(data) -> str:
    """The printed table: one row per configuration, with cost columns when some GPU is priced."""
    priced = any(r.price_per_hour is not None for r in data.results)
    from sim.report.plan import format_usd

    width = max([28] + [len(r.label) + 1 for r in data.results])
    head = f"{'configuration':<{width}} {'capacity (req/s)':>16} {'replicas':>9} {'GPUs':>6} {'headroom':>9}"
    if priced:
        head += f" {'$/hour':>9} {'$/M out tok':>11}"
    lines = [head + f" {'probes':>7}"]
    for r in data.results:
        cap = f"{r.capacity_rps:.4g}" + ("+" if r.unbounded else "")
        room = "n/a" if r.headroom is None else f"{100 * r.headroom:.1f}%"
        line = (
            f"{r.label:<{width}} {cap:>16} {r.replicas if r.replicas is not None else 'n/a':>9} "
            f"{r.gpus if r.gpus is not None else 'n/a':>6} {room:>9}"
        )
        if priced:
            line += f" {format_usd(r.cost_per_hour):>9} {format_usd(r.cost_per_million_tokens):>11}"
        lines.append(line + f" {len(r.probes):>7}")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    from sim.progress import StatusLine
    from sim.records.rundir import open_run_dir
    from sim.report.html import write_outputs
    from sim.report.sweep import run_sweep, write_table
    from sim.report.sweep_page import build_sweep_page
    from sim.report.sweep_spec import load_spec

    spec = load_spec(args.spec)
    out = args.out or os.path.join("runs", f"sweep-{spec.name}")
    use_ray = args.ray is not None
    address = args.ray if args.ray not in (None, "") else None
    status = StatusLine(enabled=False if args.quiet else None)
    report_path = os.path.join(out, "report.html")
    with open_run_dir(out, f"sweep-{spec.name}", force=False, resume=True):  # locked, writable, or exit 2
        for stale in (os.path.join(out, spec.table), report_path):  # rewritten from the cells at the end
            if os.path.exists(stale):
                os.unlink(stale)
        run = run_sweep(
            spec, out, jobs=args.jobs, use_ray=use_ray, ray_address=address, status=status, fresh=args.fresh
        )

        def save(path: str) -> None:
            directory = os.path.dirname(path)
            table = write_table(dataclasses.replace(run, out=directory))
            write_outputs(os.path.join(directory, "report.html"), build_sweep_page(run, table), {})

        def table_only(path: str) -> None:
            write_table(dataclasses.replace(run, out=os.path.dirname(path)))

        _save_or_rescue(os.path.join(out, spec.table), save, table_only)
        table_path = os.path.join(out, spec.table)
    print(
        f"{len(run.cells)} cells: {run.computed} computed on {run.engine}, {run.resumed} resumed, "
        f"in {run.wall_s:,.1f} s"
    )
    print(f"wrote {table_path} and {report_path}")
    return 0


def register(sub) -> None:
    from sim.allocators import REGISTRY
    from sim.cli.options import add_replay_options
    from sim.report.capacity import DEFAULT_PRECISION

    p = sub.add_parser(
        "report",
        help="capacity-planning report: capacity within SLOs, GPUs for a target rate, "
        "KV memory, latency (one HTML file)",
        description="For each allocator x block size: the highest arrival rate (the trace's arrivals "
        "scaled) at which every SLO holds, found by bracketing and bisection; the "
        "replicas and GPUs the target rate needs; charts; one self-contained HTML file "
        "with its data beside it (<name>-data/).",
        epilog="Exit status: 0 when a configuration meets the SLOs; 1 when none does at any rate probed (the report "
        "is still written); 2 on bad input.",
    )
    add_replay_options(p)
    p.add_argument(
        "--allocators",
        default="paged,contiguous-max",
        help=f"comma-separated allocators to compare (registered: {', '.join(REGISTRY)}; "
        "default: paged,contiguous-max)",
    )
    p.add_argument(
        "--block-sizes",
        type=_int_list,
        metavar="N,N,...",
        help="block sizes to compare (block-size sensitivity); default: --block-size",
    )
    p.add_argument(
        "--slo",
        default="ttft_p99=2s,tpot_p99=100ms",
        help="latency targets METRIC_pXX=DURATION, comma-separated; METRIC: ttft, tpot, e2e (default: %(default)s)",
    )
    p.add_argument(
        "--target-rate",
        type=positive_float,
        metavar="REQ_PER_S",
        help="requests/s to serve in all; sets the replicas and GPUs needed (default: the trace's own rate)",
    )
    p.add_argument(
        "--routers",
        default="round-robin",
        metavar="ROUTER[,ROUTER...]",
        help="find the replicas for the target rate by replaying the trace as a cluster behind each router (the "
        "first one's count is recommended; see `sim routers`), or 'none' to divide the target rate by one replica's "
        "capacity (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        type=positive_float,
        default=DEFAULT_PRECISION,
        help="relative precision of the capacity search: stop when the lowest failing rate is within "
        "this fraction of the highest passing one (default: %(default)g)",
    )
    p.add_argument(
        "--start-rate",
        type=positive_float,
        metavar="REQ_PER_S",
        help="first rate the search probes (default: the trace's own rate)",
    )
    p.add_argument(
        "--host-kv-memories",
        metavar="SIZE[,SIZE...]",
        help="compare host tiers: host KV memory per GPU for each configuration of a paged allocator, 0 for GPU only "
        "(e.g. 0,128GiB,512GiB; --host-link and --preemption apply to those with a host tier)",
    )
    p.add_argument("--first", type=positive_int, metavar="N", help="use only the trace's first N requests")
    p.add_argument("--duration", metavar="T", help="use only requests arriving in the trace's first T (e.g. 600s)")
    p.add_argument("--jobs", "-j", type=positive_int, help="local processes (default: one per core)")
    p.add_argument(
        "-o", "--output", metavar="HTML", help="report file (default: report.html; or --out DIR/report.html)"
    )
    for action in p._actions:  # the shared replay options describe --out/--force for a run directory
        if action.dest == "out":
            action.metavar = "DIR"
            action.help = "write the report to DIR/report.html (its data to DIR/report-data/) unless -o is given"
        elif action.dest == "force":
            action.help = "overwrite an existing report file"

    for action in p._actions:  # --gpu: no default here, so that giving it beside --gpus can be refused
        if action.dest == "gpu":
            action.default = None
            action.help += "; one GPU (--gpus compares several)"
    p.add_argument(
        "--gpus",
        action="append",
        metavar="G1,G2;DIMS",
        help="GPUs to compare (one capacity search per GPU x allocator x block size): presets or TOML files, "
        "comma-separated; a dimension string (memory=..,bandwidth=..,bf16_flops=..,name=..) is separated from the "
        "others by ';' (e.g. 'h100-80gb,h200;memory=48GB,bandwidth=864e9,bf16_flops=362e12,name=my-gpu'); "
        "repeatable; not with --gpu",
    )
    p.add_argument(
        "--price",
        action="append",
        metavar="GPU=DOLLARS_PER_HOUR",
        help="price of one GPU-hour in USD, for a GPU of the report (overrides its price_per_hour); repeatable. "
        "With prices the report gives $/hour and $ per million output tokens, and recommends the cheapest "
        "deployment when every GPU is priced",
    )
    p.add_argument(
        "--max-utilization",
        type=float,
        default=1.0,
        metavar="F",
        help="plan replicas so that each runs at most this fraction of its capacity, in (0, 1]: replicas = "
        "ceil(target / (capacity x F)) (default: 1)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the report's data (as <name>-data/report.json) to stdout as JSON instead of the table; the "
        "other lines go to stderr",
    )
    p.add_argument("--title", help="the report's title")
    p.add_argument(
        "--validation-dir",
        default=os.path.join("reports", "validation"),
        help="where to look for GPU validation results (validation.json; default: %(default)s)",
    )
    p.add_argument("--screenshot", metavar="PNG", help="also save a PNG of the report (needs Chromium)")
    p.add_argument("--screenshot-height", type=positive_int, default=4200, help="screenshot height in pixels")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "sweep",
        help="a grid of replays (traces x models x GPUs x allocators x block sizes x rates) "
        "-> one table and a report; resumable; local processes or Ray",
        description="Run the grid a TOML spec describes (see the README, 'Capacity planning'). "
        "Finished cells are kept under OUT/cells/ and not recomputed by a rerun.",
    )
    p.add_argument("spec", help="the sweep's TOML spec")
    p.add_argument("--out", help="output directory (default: runs/sweep-<name>); a rerun resumes there")
    p.add_argument(
        "--jobs",
        "-j",
        type=positive_int,
        help="local processes, or CPUs of a local Ray instance (default: one per core)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the cells as Ray tasks: on a new local Ray instance, or the cluster at ADDRESS "
        "(needs the ray extra: pip install 'kvsim[ray]')",
    )
    p.add_argument("--fresh", action="store_true", help="recompute every cell, ignoring finished ones")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
