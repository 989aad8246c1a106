"""The GPU replay: the simulator's scheduler and allocator objects, driven by real time on a real GPU.

Long file: the run's set-up (model, pool of one or several KV-cache groups, host pool, static-buffer runners) and the
real-time loop that uses them are kept with the checks of what the harness can execute.

The loop is the simulator engine's (`sim.serving.engine.Engine`) on a real clock, without fast-forward (which only
exists to save simulated work). Arrivals, rejections and the empty-batch path are the very same code,
`sim.serving.intake.Intake`, and so are the scheduler (`make_scheduler`) and the records:

    intake.take_arrivals(now) (the trace's clock runs in real time; an idle loop sleeps until the next arrival);
    schedule(now) -> Batch (empty: intake.reject_head); execute it on the GPU (kernels.harness.executor);
    finish(batch, end).

It writes the same per-iteration (`StepLog`) and per-request (`RequestLog`) records and the same `summarize` figures as
the simulator. An iteration's duration is the wall time from just before `schedule()` to the end of its device
synchronisation; the clock excludes only the harness's own measurement work (the memory breakdown the records need,
which a serving engine would not compute, and the reference checks), so the trace's arrivals meet the engine at the
same points in its work as they would without the measuring.

Models with sliding-window layers (any pattern of full and sliding layers; MLA is refused, `check_model`): the pool
is laid out for the allocator's budget (`GpuRun._build_pool`, kernels.harness.kv_pool): one tensor per layer for an
allocator of one block table, vLLM's hybrid pages for `paged-hybrid` and `paged-hybrid-prefix-cache`, whose replay
also records each KV-cache group's memory per iteration (steps' g<i>_ columns) and the summary's `kv_groups`, as the
simulator's replay does. `gpu_replay` lays the pool out again when `run.options` names an allocator whose budget
differs (`GpuRun.use_options`: `sim validate --allocators paged-hybrid,paged` on such a model); both layouts run
through the CUDA-graph paths.

A host tier (`--host-kv-memory`, `--preemption swap`; sim.allocators.host_tier) with the paged allocators: the run
keeps a host pool of the tier's blocks (kernels.harness.host_pool: pinned memory on CUDA) and the executor runs each
iteration's copies (`Batch.transfers`) on it, in order, before the iteration's own work; an iteration that runs
nothing carries its copies into the next one, as the simulator's engine does (`Engine._carried`). The records get the
host columns of steps.csv (`sim.records.host_steps.HostStepLog`) and the summary `host_tier`
(`sim.records.host_summary`), whose `link_time_s` is the measured time of the copies and whose `measured` holds what
the executor moved (blocks, and bytes in the simulator's block bytes and in the harness pool's) and how. Every
iteration that copies blocks back to the GPU is checked (whatever `check_every`), the sequences reading them among
the rows (kernels.harness.executor), so every round trip through the host is checked. Other
allocators with a host tier are refused (`check_host_tier`), and so is a host pool the machine's memory cannot pin.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.harness.decode_graphs import DecodeRunner
from kernels.harness.executor import CheckResult, Executor
from kernels.harness.host_pool import HostKVPool
from kernels.harness.kv_pool import KVPool, kv_layers
from kernels.harness.kv_source import KVSource, LineageTracker
from kernels.harness.mixed_graphs import MixedRunner
from kernels.harness.model import RandomTransformer, Shapes
from sim.allocators import resolve_allocator
from sim.allocators.host_tier import SWAP_IN, SWAP_OUT, TO_GPU, TO_HOST, Transfer
from sim.allocators.paged import PagedAllocator
from sim.errors import UserError
from sim.hardware.budget import KVBudget, activation_reserve_bytes
from sim.hardware.models import ModelSpec
from sim.records.host_steps import HostStepLog
from sim.records.host_summary import host_tier_summary
from sim.records.requests import RequestLog
from sim.records.steps import GroupStepLog, StepLog, record_iteration
from sim.records.summary import kv_groups_summary
from sim.serving.intake import Intake
from sim.serving.replay import (
    ReplayOptions,
    make_allocator,
    make_cost_model,
    make_scheduler,
    replay_summary,
    validate_options,
)
from sim.traces.model import Trace

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class HarnessOptions:
    layers: int | None = None  # override the model's layer count (quick checks; results of record use all)
    dtype: str = "bf16"
    device: str = "cuda"
    check: bool = True  # deterministic K/V and reference checks
    check_every: int = 50  # iterations between checks (the first iteration is checked too, and with a host tier
    # every iteration that copies blocks back from the host)
    source_rows: int = 8192
    time_limit_s: float | None = None  # stop the replay (marked truncated) after this much wall time
    seed: int = 0
    warmup: bool = True
    # Decode-only iterations through static buffers replayed as CUDA graphs (kernels.harness.decode_graphs); on a CPU
    # device the same static-buffer path runs eagerly. False: every iteration eager.
    cuda_graphs: bool = True
    # Iterations with prefill tokens through static buffers and CUDA graphs too (kernels.harness.mixed_graphs);
    # needs cuda_graphs. False: they run eagerly.
    prefill_graphs: bool = True


def check_model(model: ModelSpec) -> None:
    """Models the harness can run: dense attention with K and V per KV head (full or sliding-window layers, in any
    pattern); MLA's latent cache has no kernel here."""
    if model.is_mla:
        raise UserError(
            f"the GPU harness runs attention with K and V per KV head; {model.name} caches an MLA latent, which "
            f"its kernels do not support"
        )


def _physical_memory() -> int | None:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def host_pool_bytes(options: ReplayOptions, shapes: Shapes, dtype: torch.dtype) -> tuple[int, int]:
    """(host blocks, bytes of the harness's host pool) of the options' host tier: the tier's blocks, each one block
    of the harness's pool (its layers and dtype)."""
    budget = options.budget()
    blocks = options.host_kv_memory // (budget.block_size * budget.bytes_per_token)
    elt = torch.empty(0, dtype=dtype).element_size()
    return blocks, blocks * shapes.layers * 2 * budget.block_size * shapes.kv_heads * shapes.head_size * elt


def check_host_tier(options: ReplayOptions, shapes: Shapes, dtype: torch.dtype, cuda: bool) -> None:
    """A host tier the harness can execute, or a UserError: its copies name blocks of block tables, so the allocator
    must be a paged allocator of one block table (PagedAllocator or a subclass: paged, paged-prefix-cache); and the
    host pool (pinned on CUDA, where the caching host allocator rounds it up to a power of two) must fit in half the
    machine's memory."""
    if options.host_kv_memory is None:
        return
    cls = resolve_allocator(options.allocator)
    if not (isinstance(cls, type) and issubclass(cls, PagedAllocator)) or getattr(cls, "uses_kv_groups", False):
        raise UserError(
            f"the GPU harness executes a host tier's copies for the paged allocators of one block table (paged, "
            f"paged-prefix-cache), not {options.allocator}"
        )
    _, nbytes = host_pool_bytes(options, shapes, dtype)
    pinned = 1 << max(0, (nbytes - 1).bit_length()) if cuda else nbytes
    ram = _physical_memory()
    if ram is not None and pinned > ram // 2:
        raise UserError(
            f"the GPU harness would hold the host tier in {pinned / 2**30:.1f} GiB of "
            f"{'pinned ' if cuda else ''}host memory, more than half of this machine's {ram / 2**30:.1f} GiB: give a "
            f"smaller --host-kv-memory"
        )


@dataclass
class GpuRun:
    """The model, pool and K/V table for one configuration (reused across allocators: the same pool where their
    budgets agree, else rebuilt by `use_options`)."""

    options: ReplayOptions
    harness: HarnessOptions
    budget: KVBudget
    model: RandomTransformer
    pool: KVPool | None
    source: KVSource | None
    decode_runner: DecodeRunner | None = None  # shared by every executor of the run (its graphs bake in the pool)
    mixed_runner: MixedRunner | None = None  # the same for iterations with prefill tokens
    host_pool: HostKVPool | None = None  # a host tier's blocks (kernels.harness.host_pool), built on first need

    @classmethod
    def build(cls, options: ReplayOptions, harness: HarnessOptions) -> GpuRun:
        validate_options(options)
        check_model(options.model)
        budget = options.budget()
        shapes = Shapes.of(options.model, harness.layers)
        dtype = DTYPES[harness.dtype]
        if harness.device == "cuda" and not torch.cuda.is_available():
            raise UserError("the GPU harness needs a CUDA GPU (torch.cuda.is_available() is False)")
        check_host_tier(options, shapes, dtype, harness.device == "cuda")
        model = RandomTransformer(shapes, dtype, harness.device, harness.seed)
        source = (
            KVSource(harness.source_rows, shapes.kv_heads, shapes.head_size, dtype, harness.device, harness.seed + 1)
            if harness.check
            else None
        )
        run = cls(options, harness, budget, model, None, source)
        run._build_pool()
        return run

    def _build_pool(self) -> None:
        """The pool for the budget's layout (one tensor per layer, or vLLM's pages of KV-cache groups:
        kernels.harness.kv_pool) and the static-buffer runners over it."""
        options, harness, model, source = self.options, self.harness, self.model, self.source
        shapes, budget = model.shapes, self.budget
        layers = kv_layers(options.model, shapes.layers, budget.layout)
        self.pool = KVPool(
            shapes.layers,
            budget.num_blocks,
            budget.block_size,
            shapes.kv_heads,
            shapes.head_size,
            model.dtype,
            harness.device,
            layers=layers,
        )
        check_layers = layers.check_layers()
        runner = mixed = None
        if harness.cuda_graphs:
            graphs = model.device.type == "cuda"
            # One context bucket, the model's max length, as the split-KV bound of every decode graph: the kernel
            # picks its split count from that bound, and with finer buckets a calibration batch of uniform lengths
            # (bound = its length: often no split) and a replay batch of the same total context but one long
            # sequence (bound 4,096: the split path and its reduce) ran different kernels, and replay decode
            # iterations measured 5% slower than calibration said for the same tokens.
            runner = DecodeRunner(
                model,
                self.pool,
                source,
                check_layers,
                options.engine_config.max_num_seqs,
                options.model.max_model_len,
                use_graphs=graphs,
                min_ctx_bucket=options.model.max_model_len,
            )
            if harness.prefill_graphs:
                mixed = MixedRunner(
                    model,
                    self.pool,
                    source,
                    check_layers,
                    options.engine_config.max_num_seqs,
                    options.engine_config.batched_tokens_limit(options.model),
                    options.model.max_model_len,
                    use_graphs=graphs,
                    mempool=runner._mempool,
                )
        self.decode_runner, self.mixed_runner = runner, mixed

    def use_options(self, options: ReplayOptions) -> bool:
        """Run `options` (another allocator of the same model and GPU) on this run. When its budget differs from the
        run's (a model with KV-cache groups: a grouped allocator's pages against one block of every layer), the
        pool and the static-buffer runners are built again for it (the weights and the K/V table stay), and any
        graph is captured again on first use. Returns whether they were rebuilt."""
        validate_options(options)
        check_host_tier(options, self.model.shapes, self.model.dtype, self.model.device.type == "cuda")
        budget = options.budget()
        self.options = options
        self.budget = budget
        layers = kv_layers(options.model, self.model.shapes.layers, budget.layout)
        pool = self.pool
        if (pool.num_blocks, pool.block_size, pool.layers) == (budget.num_blocks, budget.block_size, layers):
            return False
        self.pool = self.decode_runner = self.mixed_runner = self.host_pool = None  # free the old pool (and graphs)
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        self._build_pool()
        return True

    def executor(self, allocator: LineageTracker, seed: int = 0, host_pool: HostKVPool | None = None) -> Executor:
        """An executor over this run's model, pool, K/V table and decode runner (and host pool, for a host tier)."""
        return Executor(
            self.model,
            self.pool,
            allocator,
            self.source,
            seed=seed,
            runner=self.decode_runner,
            mixed_runner=self.mixed_runner,
            host_pool=host_pool,
        )

    def host_pool_for(self, num_blocks: int) -> HostKVPool:
        """The host pool of `num_blocks` blocks over this run's pool (kept for the next allocator of the run)."""
        hp = self.host_pool
        if hp is None or hp.pool is not self.pool or hp.num_blocks != num_blocks:
            self.host_pool = None
            gc.collect()
            self.host_pool = HostKVPool(self.pool, num_blocks)
        return self.host_pool

    def memory(self) -> dict:
        """Sizes of what the harness holds, beside the simulator's budget (bytes)."""
        o = self.options
        shapes = self.model.shapes
        return {
            "harness_weights": self.model.weight_bytes(),
            "harness_pool": self.pool.nbytes,
            "harness_kv_source_table": self.source.nbytes() if self.source else 0,
            "harness_params": shapes.num_params(),
            "sim_weights": o.model.weight_bytes(o.tp) if shapes.layers == o.model.num_layers else None,
            "sim_activations": activation_reserve_bytes(o.model, o.engine_config, o.tp),
            "sim_kv": self.budget.capacity_bytes,
            "sim_kv_per_layer_pool": self.budget.capacity_bytes * shapes.layers // o.model.num_layers,
            "model_params_preset": o.model.num_params,
            "harness_host_pool": self.host_pool.nbytes if self.host_pool is not None else 0,
            "harness_host_staging": self.host_pool.staging_nbytes if self.host_pool is not None else 0,
        }


@dataclass
class HarnessResult:
    summary: dict
    steps: dict[str, np.ndarray]
    requests: RequestLog
    budget: KVBudget
    gpu_s: np.ndarray  # CUDA-event time of each iteration
    host_s: np.ndarray  # wall time of execute() alone
    checks: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    truncated: bool = False
    static: np.ndarray | None = None  # per iteration: 0 eager, 1 decode-only graph, 2 graph with prefill tokens
    issue_s: np.ndarray | None = None  # host time from an iteration's start event to its last launch (CUDA)
    # a host tier: per iteration, the measured time of its copies (0 without) and the bytes the executor moved to the
    # host and to the GPU (the harness pool's blocks); None without a host tier
    transfer_s: np.ndarray | None = None
    transfer_bytes: np.ndarray | None = None  # [iterations, 2]: to the host, to the GPU


def gpu_replay(trace: Trace, run: GpuRun, progress=None) -> HarnessResult:
    if run.use_options(run.options) and run.harness.warmup:  # (run.options may name another allocator now)
        from kernels.harness.calibrate import warm_up

        warm_up(run)
    options, h = run.options, run.harness
    budget = run.budget
    allocator = LineageTracker(make_allocator(options, budget))
    sched = make_scheduler(options, allocator)
    host = getattr(allocator.wrapped, "host", None)  # a host tier (sim.allocators.host_tier), or None
    if host is not None:
        allocator.track_order()  # copies and transfers in the order they were recorded (kv_source)
    host_pool = None
    if host is not None:
        host_pool = run.host_pool_for(host.num_blocks)
        if host_pool.cuda and h.warmup:  # the copy path's first use (kernel loading), outside the measured loop
            host_pool.elapsed(
                host_pool.execute([Transfer(TO_HOST, SWAP_OUT, 0, 0, 0), Transfer(TO_GPU, SWAP_IN, 0, 0, 0)])
            )
        host_pool.fill(float("nan"))  # a host block nothing wrote reads as NaN too
    executor = run.executor(allocator, seed=h.seed, host_pool=host_pool)
    run.pool.fill(float("nan"))  # a slot nothing wrote reads as NaN, which the checks report
    bpt = budget.bytes_per_token
    intake = Intake(trace, sched, options.model.max_model_len, progress)
    req = intake.requests
    # an allocator with KV-cache groups records each group's memory per iteration, as the simulator's replay does
    layout = budget.layout if executor.grouped and hasattr(allocator, "memory_by_group") else None
    steps = GroupStepLog(len(layout.groups), bpt) if layout is not None else StepLog()
    if host is not None:  # the host tier's columns, as the simulator's replay records them
        steps = HostStepLog(host)
    carried: list = []  # host-tier copies of an iteration that ran nothing: they run with the next one
    carried_ops: list = []  # ... in order with that iteration's copy-on-write copies
    transfer_s: list[float] = []
    transfer_bytes: list[tuple[int, int]] = []
    moved = {"blocks_to_host": 0, "blocks_to_gpu": 0, "waves": 0, "dma_copies": 0, "iterations": 0}
    gpu_s: list[float] = []
    host_s: list[float] = []
    issue_s: list[float] = []
    checks = CheckResult()
    trace_start = float(trace.arrival_s[0]) if len(trace) else 0.0
    excluded = 0.0
    truncated = False
    iteration = 0
    static_iters = mixed_iters = 0
    static_flags: list[int] = []
    runners = [r for r in (run.decode_runner, run.mixed_runner) if r is not None]
    graphs_before = sum(len(r.graphs) for r in runners)
    capture_before = sum(r.capture_s_total for r in runners)
    # start-up work before the clock starts: a full collection took 50-80 ms on the H100 runs, which put the first
    # iteration that late after the first arrival (tests/harness/test_replay_clock.py)
    gc.collect()
    gc.disable()  # no collector pauses inside measured iterations; re-enabled after the loop
    if run.pool.kv.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0 - excluded + trace_start

    try:
        while True:
            intake.take_arrivals(clock())
            if not sched.has_work():
                if intake.exhausted:
                    break
                time.sleep(max(0.0, intake.arrival[intake.next_index] - clock()))
                continue
            if h.time_limit_s is not None and time.perf_counter() - t0 > h.time_limit_s:
                truncated = True
                break
            start = clock()
            batch = sched.schedule(start)
            ops = allocator.take_ops() if host is not None else None
            if carried:  # as sim.serving.engine.Engine.advance
                batch.transfers = carried + batch.transfers
                ops = carried_ops + (ops or [])
                carried, carried_ops = [], []
            if not batch:
                intake.reject_head(batch)
                carried = batch.transfers
                if carried:  # the swap-outs that still happen, with the copies recorded before them (copy_segments)
                    keep = {id(t) for t in carried}
                    carried_ops = [op for op in ops or [] if op[0] == "copy" or id(op[1]) in keep]
                continue
            m0 = time.perf_counter()
            mem = allocator.memory(sched.next_waiting_final_len(), sched.next_waiting_prefill_tokens())
            unshared = allocator.held_without_sharing()
            # every check_every-th iteration, and every iteration that brings blocks back from the host (a round trip)
            do_check = run.source is not None and (
                iteration % max(1, h.check_every) == 0 or any(t.direction == TO_GPU for t in batch.transfers)
            )
            excluded += time.perf_counter() - m0
            e0 = time.perf_counter()
            result = executor.execute(batch, check=do_check, ops=ops)
            excluded += result.capture_s  # a graph captured on first use: start-up work, not this iteration's
            end = clock()
            host_s.append(time.perf_counter() - e0 - result.capture_s)
            static_iters += result.static
            mixed_iters += result.mixed_static
            static_flags.append(1 if result.static else 2 if result.mixed_static else 0)
            if do_check:
                c0 = time.perf_counter()
                checks.merge(executor.check(result.capture))
                excluded += time.perf_counter() - c0
            gpu_s.append(result.gpu_s if result.gpu_s is not None else float("nan"))
            issue_s.append(result.issue_s if result.issue_s is not None else float("nan"))
            if host is not None:
                tr = result.transfer
                transfer_s.append(result.transfer_s or 0.0)
                transfer_bytes.append((tr.bytes_to_host, tr.bytes_to_gpu) if tr is not None else (0, 0))
                if tr is not None:
                    moved["blocks_to_host"] += tr.blocks_to_host
                    moved["blocks_to_gpu"] += tr.blocks_to_gpu
                    moved["waves"] += tr.waves
                    moved["dma_copies"] += tr.dma_copies
                    moved["iterations"] += 1
            finished = sched.finish(batch, end)
            record_iteration(
                steps, req, start, end - start, end, batch, len(sched.waiting), mem, unshared, bpt, finished
            )
            if finished:
                intake.count_done(len(finished))
            iteration += 1
    finally:
        gc.enable()
    arrays = steps.arrays()
    memory = run.memory()
    if run.pool.kv.is_cuda:
        memory["peak_allocated"] = torch.cuda.max_memory_allocated()
        memory["peak_reserved"] = torch.cuda.max_memory_reserved()
        memory["activations_peak_measured"] = (
            memory["peak_allocated"]
            - memory["harness_weights"]
            - memory["harness_pool"]
            - memory["harness_kv_source_table"]
            - memory["harness_host_staging"]
        )
        memory["device_total"] = torch.cuda.get_device_properties(0).total_memory
    summary = {
        **replay_summary(allocator.wrapped, sched, budget, options, trace, arrays, req),
        "harness": {
            "layers": run.model.shapes.layers,
            "dtype": h.dtype,
            "check": h.check,
            "check_every": h.check_every,
            "truncated": truncated,
            "excluded_measurement_s": excluded,
            "gpu_s_total": float(np.nansum(gpu_s)),
            "execute_s_total": float(np.sum(host_s)),
            "cuda_graphs": bool(run.decode_runner is not None and run.decode_runner.use_graphs),
            "prefill_graphs": bool(run.mixed_runner is not None and run.mixed_runner.use_graphs),
            "static_decode_iterations": int(static_iters),
            "static_prefill_iterations": int(mixed_iters),
            "iterations": int(iteration),
            "graphs_captured": sum(len(r.graphs) for r in runners) - graphs_before,
            "graph_capture_s": sum(r.capture_s_total for r in runners) - capture_before,
        },
    }
    if layout is not None:
        summary["kv_groups"] = kv_groups_summary(arrays, layout.groups, options.tp, budget.capacity_bytes)
    if host is not None:
        summary["host_tier"] = _host_summary(options, host, host_pool, sched, budget, arrays, transfer_s, moved)
    return HarnessResult(
        summary,
        arrays,
        req,
        budget,
        np.asarray(gpu_s),
        np.asarray(host_s),
        checks.as_dict(DTYPES[h.dtype]),
        memory,
        truncated,
        np.asarray(static_flags, dtype=np.int8),
        np.asarray(issue_s),
        np.asarray(transfer_s) if host is not None else None,
        np.asarray(transfer_bytes, dtype=np.int64).reshape(-1, 2) if host is not None else None,
    )


def _host_summary(options, host, host_pool, sched, budget, steps, transfer_s, moved) -> dict:
    """The summary's `host_tier` for a GPU replay: the simulator's figures (sim.records.host_summary) of the policy
    the replay ran, with `link_time_s` the measured time of its copies (the recompute estimate keeps the
    prediction's cost model: `make_cost_model`), and `measured`: what the executor moved and how."""
    cost = make_cost_model(options)
    cost.link_time_s = float(np.sum(transfer_s))
    tier = host_tier_summary(host, cost, steps, sched.prefill_tokens_requested, budget.block_size, options.preemption)
    tier["measured"] = {
        "transfer_s": float(np.sum(transfer_s)),
        "iterations_with_transfers": moved["iterations"],
        "blocks_to_host": moved["blocks_to_host"],
        "blocks_to_gpu": moved["blocks_to_gpu"],
        # the blocks the executor moved, in the simulator's block bytes (the model's layers and KV dtype) ...
        "bytes_to_host": moved["blocks_to_host"] * host.block_bytes,
        "bytes_to_gpu": moved["blocks_to_gpu"] * host.block_bytes,
        # ... and in the harness pool's (its layers and dtype: the same with every layer and the model's dtype)
        "harness_bytes_to_host": moved["blocks_to_host"] * host_pool.block_bytes,
        "harness_bytes_to_gpu": moved["blocks_to_gpu"] * host_pool.block_bytes,
        "harness_block_bytes": host_pool.block_bytes,
        "waves": moved["waves"],
        "dma_copies": moved["dma_copies"],
        "pinned": bool(host_pool.storage.is_pinned()) if host_pool.cuda else False,
        "staging_blocks": host_pool.staging_blocks,
    }
    return tier
