"""The sweep specification: reading and checking `SPEC.toml` (see `sim.report.sweep` for the format), the
ReplayOptions of each cell, and the cells of the grid with their cache keys."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass, field

import sim
from sim.allocators import resolve_allocator
from sim.cluster.routers import DEFAULT_ROUTER, resolve_router
from sim.cost.roofline import DEFAULT_STEP_OVERHEAD_S
from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import KV_CACHE_DTYPES, resolve_model
from sim.report.slo import parse_slos
from sim.serving.replay import PREEMPTION_MODES, ReplayOptions, host_tier_capable, validate_options
from sim.serving.schedulers import DEFAULT_SCHEDULER, resolve_scheduler
from sim.units import parse_duration, parse_size

ADDRESS_SPACES = ("buddy", "first-fit")
MAX_INT = 2**63 - 1

SPEC_KEYS = {
    "name",
    "traces",
    "models",
    "gpus",
    "allocators",
    "block_sizes",
    "rates",
    "slo",
    "first",
    "duration",
    "table",
    "options",
    "replicas",
    "routers",
}
OPTION_KEYS = {
    "scheduler",
    "long_prefill_token_threshold",
    "tp",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_memory",
    "gpu_memory_utilization",
    "max_model_len",
    "address_space",
    "kv_cache_dtype",
    "step_overhead",
    "sharing",
    "beam_replace_prob",
    "seed",
    "cost_model",
    "host_kv_memory",
    "host_link",
    "preemption",
}


@dataclass
class SweepSpec:
    path: str
    name: str
    traces: list[str]  # as the spec gives them (normalized), relative to the spec's directory: the table's column
    models: list[str]
    gpus: list[str]
    allocators: list[str]
    block_sizes: list[int]
    rates: list  # floats, or "native"
    slo: str | None = None
    first: int | None = None
    duration_s: float | None = None
    table: str = "results.csv"
    options: dict = field(default_factory=dict)  # checked values, as the spec gives them
    base_dir: str = ""  # the spec file's directory: trace and cost-model paths are relative to it
    replicas: list[int] = field(default_factory=lambda: [1])  # replicas behind the router (sim.cluster)
    routers: list[str] = field(default_factory=lambda: [DEFAULT_ROUTER])

    def trace_file(self, trace: str) -> str:
        """The file of one of `traces` (which are relative to the spec's directory)."""
        return os.path.join(self.base_dir, trace)

    def cost_model_file(self) -> str | None:
        cost_model = self.options.get("cost_model")
        return None if cost_model is None else os.path.join(self.base_dir, cost_model)


def _list(data: dict, key: str, kind, path: str, default=None) -> list:
    value = data.get(key, default)
    if value is None:
        raise UserError(f"{path}: the spec needs `{key}` (a list)")
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise UserError(f"{path}: `{key}` is empty")
    out = []
    for v in value:
        if kind is float and v == "native":
            out.append("native")
            continue
        if kind is int and not (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INT):
            raise UserError(f"{path}: `{key}` must hold positive integers, got {v!r}")
        if kind is float and not (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        ):
            raise UserError(f'{path}: `{key}` must hold positive numbers (req/s) or "native", got {v!r}')
        if kind is str and not isinstance(v, str):
            raise UserError(f"{path}: `{key}` must hold strings, got {v!r}")
        out.append(float(v) if kind is float else v)
    if len(set(map(str, out))) != len(out):
        raise UserError(f"{path}: `{key}` names a value twice")
    return out


def load_spec(path: str) -> SweepSpec:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SPEC_KEYS))}")
    base = os.path.dirname(os.path.abspath(path))
    traces = [os.path.normpath(t) for t in _list(data, "traces", str, path)]
    if len(set(traces)) != len(traces):
        raise UserError(f"{path}: `traces` names a file twice")
    for t in traces:
        if not os.path.isfile(os.path.join(base, t)):
            raise UserError(f"{path}: trace {t} does not exist (trace paths are relative to the spec's directory)")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise UserError(f"{path}: [options] must be a table")
    bad = set(options) - OPTION_KEYS
    if bad:
        raise UserError(f"{path}: unknown option(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(OPTION_KEYS))}")
    for key, value in options.items():
        _check_option(path, base, key, value)
    first = data.get("first")
    if first is not None and not (isinstance(first, int) and not isinstance(first, bool) and first > 0):
        raise UserError(f"{path}: `first` must be a positive integer, got {first!r}")
    duration = data.get("duration")
    duration_s = _duration(path, "`duration`", duration) if duration is not None else None
    for key in ("name", "slo", "table"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{path}: `{key}` must be a string, got {data[key]!r}")
    table = data.get("table", "results.csv")
    if not table.endswith((".csv", ".parquet")) or os.path.basename(table) != table:
        raise UserError(f"{path}: `table` must be a file name ending in .csv or .parquet, got {table!r}")
    spec = SweepSpec(
        path=path,
        name=data.get("name", os.path.splitext(os.path.basename(path))[0]),
        traces=traces,
        models=_list(data, "models", str, path, ["llama-2-7b"]),
        gpus=_list(data, "gpus", str, path, ["a100-80gb"]),
        allocators=_list(data, "allocators", str, path, ["paged"]),
        block_sizes=_list(data, "block_sizes", int, path, [16]),
        rates=_list(data, "rates", float, path, ["native"]),
        slo=data.get("slo"),
        first=first,
        duration_s=duration_s,
        table=table,
        options=dict(options),
        base_dir=base,
        replicas=_list(data, "replicas", int, path, [1]),
        routers=_list(data, "routers", str, path, [DEFAULT_ROUTER]),
    )
    for router in spec.routers:
        resolve_router(router)
    if spec.slo is not None:
        parse_slos(spec.slo)  # validate early
    for m in spec.models:
        resolve_model(m)
    for g in spec.gpus:
        resolve_gpu(g)
    for a in spec.allocators:
        resolve_allocator(a)
    validate_options(base_options(spec, spec.models[0], spec.gpus[0]))
    for m, g, b in itertools.product(spec.models, spec.gpus, spec.block_sizes):  # a budget that cannot be: now
        dataclasses.replace(base_options(spec, m, g), block_size=b).budget()
    cost_model = spec.cost_model_file()
    if cost_model is not None:
        from sim.cost.profile import ProfileCostModel

        ProfileCostModel.load(cost_model)  # a missing or unreadable profile stops the sweep before any cell
    return spec


def _duration(path: str, what: str, value) -> float:
    """A duration given as a string ('2ms') or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f'{path}: {what} must be a duration such as "2ms", got {value!r}')
    try:
        return parse_duration(str(value))
    except UserError as exc:
        raise UserError(f"{path}: {what}: {exc}") from None


def _check_option(path: str, base: str, key: str, value) -> None:
    """One [options] value, checked by type and range: a string is not a number, nor a boolean."""
    what = f"[options] {key}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "scheduler":
        if not isinstance(value, str):
            raise UserError(f'{path}: {what} must be a scheduler name such as "vllm-v1", got {value!r}')
        try:
            resolve_scheduler(value)
        except UserError as exc:
            raise UserError(f"{path}: {what}: {exc}") from None
    elif key in (
        "tp",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "seed",
        "long_prefill_token_threshold",
    ):
        low = {"seed": 0, "max_model_len": 2, "long_prefill_token_threshold": 0}.get(key, 1)
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_INT):
            raise UserError(f"{path}: {what} must be an integer >= {low}, got {value!r}")
    elif key == "host_link":
        if not (isinstance(value, str) or is_number):
            raise UserError(f'{path}: {what} must be a link name such as "pcie5" or bytes per second, got {value!r}')
    elif key == "preemption":
        if value not in PREEMPTION_MODES:
            raise UserError(f"{path}: {what} must be one of {', '.join(PREEMPTION_MODES)}, got {value!r}")
    elif key in ("kv_memory", "host_kv_memory"):
        if not (isinstance(value, str) or is_number):
            raise UserError(f'{path}: {what} must be a size such as "40GiB", got {value!r}')
        try:
            parse_size(str(value))
        except UserError as exc:
            raise UserError(f"{path}: {what}: {exc}") from None
    elif key == "gpu_memory_utilization":
        if not (is_number and 0 < value <= 1):
            raise UserError(f"{path}: {what} must be a number in (0, 1], got {value!r}")
    elif key == "beam_replace_prob":
        if not (is_number and 0 <= value <= 1):
            raise UserError(f"{path}: {what} must be a number in [0, 1], got {value!r}")
    elif key == "kv_cache_dtype":
        if value not in KV_CACHE_DTYPES:
            raise UserError(f"{path}: {what} must be one of {', '.join(KV_CACHE_DTYPES)}, got {value!r}")
    elif key == "address_space":
        if value not in ADDRESS_SPACES:
            raise UserError(f"{path}: {what} must be one of {', '.join(ADDRESS_SPACES)}, got {value!r}")
    elif key == "step_overhead":
        _duration(path, what, value)
    elif key == "sharing":
        if not isinstance(value, bool):
            raise UserError(f"{path}: {what} must be true or false (unquoted), got {value!r}")
    elif key == "cost_model":
        if not isinstance(value, str) or not value:
            raise UserError(f"{path}: {what} must be a file name (relative to the spec), got {value!r}")
        if not os.path.isfile(os.path.join(base, value)):
            raise UserError(
                f"{path}: {what}: {value} does not exist (the cost profile's path is relative to the spec's directory)"
            )


def base_options(spec: SweepSpec, model: str, gpu: str) -> ReplayOptions:
    """The replay options of one model and GPU (values checked by `load_spec`)."""
    o = spec.options
    return ReplayOptions(
        model=resolve_model(model, o.get("max_model_len"), o.get("kv_cache_dtype")),
        gpu=resolve_gpu(gpu),
        kv_memory=parse_size(str(o["kv_memory"])) if "kv_memory" in o else None,
        gpu_memory_utilization=float(o.get("gpu_memory_utilization", 0.9)),
        tp=o.get("tp", 1),
        scheduler=o.get("scheduler", DEFAULT_SCHEDULER),
        max_num_seqs=o.get("max_num_seqs"),
        max_num_batched_tokens=o.get("max_num_batched_tokens"),
        long_prefill_token_threshold=o.get("long_prefill_token_threshold", 0),
        address_space=o.get("address_space"),
        step_overhead_s=parse_duration(str(o["step_overhead"])) if "step_overhead" in o else DEFAULT_STEP_OVERHEAD_S,
        sharing=o.get("sharing", True),
        beam_replace_prob=float(o.get("beam_replace_prob", 0.3)),
        seed=o.get("seed", 0),
        cost_model=spec.cost_model_file(),
        host_kv_memory=parse_size(str(o["host_kv_memory"])) if "host_kv_memory" in o else None,
        host_link=o.get("host_link"),
        preemption=o.get("preemption", "recompute"),
    )


def cell_options(spec: SweepSpec, cell: Cell) -> ReplayOptions:
    """The replay options of one cell. [options] apply to every cell where they mean something: `address_space` to
    the contiguous allocators' cells, `sharing = false` and a host tier (`host_kv_memory`, `host_link`,
    `preemption`) to the paged ones (a spec comparing both is not refused)."""
    options = dataclasses.replace(
        base_options(spec, cell.model, cell.gpu), allocator=cell.allocator, block_size=cell.block_size
    )
    cls = resolve_allocator(cell.allocator)
    if not hasattr(cls, "address_space_policy"):
        options.address_space = None
    if not (getattr(cls, "grows_on_demand", False) and hasattr(cls, "retain_cached")):
        options.sharing = True
    if not host_tier_capable(cell.allocator):
        options.host_kv_memory, options.host_link, options.preemption = None, None, "recompute"
    return options


@dataclass(frozen=True)
class Cell:
    index: int
    trace: str
    model: str
    gpu: str
    allocator: str
    block_size: int
    rate: object  # float or "native"
    key: str = ""
    replicas: int = 1
    router: str = DEFAULT_ROUTER


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cells_of(spec: SweepSpec) -> list[Cell]:
    hashes = {t: _sha256_file(spec.trace_file(t)) for t in spec.traces}
    cost_model = spec.cost_model_file()
    cost_model_sha256 = _sha256_file(cost_model) if cost_model is not None else None
    cells = []
    grid = itertools.product(
        spec.traces, spec.models, spec.gpus, spec.allocators, spec.block_sizes, spec.rates, spec.replicas, spec.routers
    )
    for i, (t, m, g, a, b, r, n, router) in enumerate(grid):
        options = base_options(spec, m, g)
        ident = {
            "trace_sha256": hashes[t],
            "first": spec.first,
            "duration_s": spec.duration_s,
            "model": dataclasses.asdict(options.model),
            "gpu": dataclasses.asdict(options.gpu),
            "allocator": a,
            "block_size": b,
            "rate": r,
            "options": {k: v for k, v in spec.options.items() if k != "cost_model"},  # the profile: by content
            "cost_model_sha256": cost_model_sha256,
            "slo": spec.slo,
            "kvsim": sim.__version__,  # an upgrade may change any figure: its cells are recomputed
        }
        if n != 1 or router != DEFAULT_ROUTER:  # a one-replica cell keeps the key it had before clusters
            ident["cluster"] = {"replicas": n, "router": router}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
        cells.append(Cell(i, t, m, g, a, b, r, key, n, router))
    return cells
