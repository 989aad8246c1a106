"""The GPU replay: the simulator's scheduler and allocator objects, driven by real time on a real GPU.

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
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.harness.decode_graphs import DecodeRunner
from kernels.harness.executor import CheckResult, Executor
from kernels.harness.kv_pool import KVPool, kv_layers
from kernels.harness.kv_source import KVSource, LineageTracker
from kernels.harness.mixed_graphs import MixedRunner
from kernels.harness.model import RandomTransformer, Shapes
from sim.errors import UserError
from sim.hardware.budget import KVBudget, activation_reserve_bytes
from sim.hardware.models import ModelSpec
from sim.records.requests import RequestLog
from sim.records.steps import GroupStepLog, StepLog, record_iteration
from sim.records.summary import kv_groups_summary
from sim.serving.intake import Intake
from sim.serving.replay import ReplayOptions, make_allocator, make_scheduler, replay_summary, validate_options
from sim.traces.model import Trace

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class HarnessOptions:
    layers: int | None = None  # override the model's layer count (quick checks; results of record use all)
    dtype: str = "bf16"
    device: str = "cuda"
    check: bool = True  # deterministic K/V and reference checks
    check_every: int = 50  # iterations between checks (the first iteration is checked too)
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

    @classmethod
    def build(cls, options: ReplayOptions, harness: HarnessOptions) -> GpuRun:
        validate_options(options)
        check_model(options.model)
        budget = options.budget()
        shapes = Shapes.of(options.model, harness.layers)
        dtype = DTYPES[harness.dtype]
        if harness.device == "cuda" and not torch.cuda.is_available():
            raise UserError("the GPU harness needs a CUDA GPU (torch.cuda.is_available() is False)")
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
        budget = options.budget()
        self.options = options
        self.budget = budget
        layers = kv_layers(options.model, self.model.shapes.layers, budget.layout)
        pool = self.pool
        if (pool.num_blocks, pool.block_size, pool.layers) == (budget.num_blocks, budget.block_size, layers):
            return False
        self.pool = self.decode_runner = self.mixed_runner = None  # free the old pool (and graphs) first
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        self._build_pool()
        return True

    def executor(self, allocator: LineageTracker, seed: int = 0) -> Executor:
        """An executor over this run's model, pool, K/V table and decode runner."""
        return Executor(
            self.model,
            self.pool,
            allocator,
            self.source,
            seed=seed,
            runner=self.decode_runner,
            mixed_runner=self.mixed_runner,
        )

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


def gpu_replay(trace: Trace, run: GpuRun, progress=None) -> HarnessResult:
    if run.use_options(run.options) and run.harness.warmup:  # (run.options may name another allocator now)
        from kernels.harness.calibrate import warm_up

        warm_up(run)
    options, h = run.options, run.harness
    budget = run.budget
    allocator = LineageTracker(make_allocator(options, budget))
    sched = make_scheduler(options, allocator)
    executor = run.executor(allocator, seed=h.seed)
    run.pool.fill(float("nan"))  # a slot nothing wrote reads as NaN, which the checks report
    bpt = budget.bytes_per_token
    intake = Intake(trace, sched, options.model.max_model_len, progress)
    req = intake.requests
    # an allocator with KV-cache groups records each group's memory per iteration, as the simulator's replay does
    layout = budget.layout if executor.grouped and hasattr(allocator, "memory_by_group") else None
    steps = GroupStepLog(len(layout.groups), bpt) if layout is not None else StepLog()
    gpu_s: list[float] = []
    host_s: list[float] = []
    issue_s: list[float] = []
    checks = CheckResult()
    trace_start = float(trace.arrival_s[0]) if len(trace) else 0.0
    excluded = 0.0
    truncated = False
    if run.pool.kv.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0 - excluded + trace_start

    iteration = 0
    static_iters = mixed_iters = 0
    static_flags: list[int] = []
    runners = [r for r in (run.decode_runner, run.mixed_runner) if r is not None]
    graphs_before = sum(len(r.graphs) for r in runners)
    capture_before = sum(r.capture_s_total for r in runners)
    gc.collect()
    gc.disable()  # no collector pauses inside measured iterations; re-enabled after the loop
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
            if not batch:
                intake.reject_head(batch)
                continue
            m0 = time.perf_counter()
            mem = allocator.memory(sched.next_waiting_final_len(), sched.next_waiting_prefill_tokens())
            unshared = allocator.held_without_sharing()
            do_check = run.source is not None and iteration % max(1, h.check_every) == 0
            excluded += time.perf_counter() - m0
            e0 = time.perf_counter()
            result = executor.execute(batch, check=do_check)
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
    )
