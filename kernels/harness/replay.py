"""The GPU replay: the simulator's scheduler and allocator objects, driven by real time on a real GPU.

The loop mirrors `sim.serving.engine.Engine` (without fast-forward, which only exists to save simulated work):

    take the requests that arrived by now (the trace's clock runs in real time; an idle loop sleeps until the next
    arrival); schedule(now) -> Batch; execute it on the GPU (kernels.harness.executor); finish(batch, end).

It writes the same per-iteration (`StepLog`) and per-request (`RequestLog`) records and the same `summarize` figures as
the simulator. An iteration's duration is the wall time from just before `schedule()` to the end of its device
synchronisation; the clock excludes only the harness's own measurement work (the memory breakdown the records need,
which a serving engine would not compute, and the reference checks), so the trace's arrivals meet the engine at the
same points in its work as they would without the measuring.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.harness.decode_graphs import DecodeRunner
from kernels.harness.executor import CheckResult, Executor
from kernels.harness.kv_pool import KVPool
from kernels.harness.kv_source import KVSource, LineageTracker
from kernels.harness.mixed_graphs import MixedRunner
from kernels.harness.model import RandomTransformer, Shapes
from sim.errors import UserError
from sim.hardware.config import KVBudget, activation_reserve_bytes
from sim.records.metrics import RequestLog, StepLog, record_iteration, sharing_summary, summarize
from sim.serving.engine import branches_of, content_of
from sim.serving.replay import ReplayOptions, make_allocator, summary_header, validate_options
from sim.serving.schedulers.vllm_v0 import BeamModel, Scheduler, SchedulerLimits, Sequence
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
    # device the same static-buffer path runs eagerly. False: every iteration eager, as before run 4.
    cuda_graphs: bool = True
    # Iterations with prefill tokens through static buffers and CUDA graphs too (kernels.harness.mixed_graphs);
    # needs cuda_graphs. False: they run eagerly, as before run 7.
    prefill_graphs: bool = True


@dataclass
class GpuRun:
    """The model, pool and K/V table for one configuration (reused across allocators: same budget, same pool)."""

    options: ReplayOptions
    harness: HarnessOptions
    budget: KVBudget
    model: RandomTransformer
    pool: KVPool
    source: KVSource | None
    decode_runner: DecodeRunner | None = None  # shared by every executor of the run (its graphs bake in the pool)
    mixed_runner: MixedRunner | None = None  # the same for iterations with prefill tokens

    @classmethod
    def build(cls, options: ReplayOptions, harness: HarnessOptions) -> GpuRun:
        validate_options(options)
        budget = options.budget()
        shapes = Shapes.of(options.model, harness.layers)
        dtype = DTYPES[harness.dtype]
        if harness.device == "cuda" and not torch.cuda.is_available():
            raise UserError("the GPU harness needs a CUDA GPU (torch.cuda.is_available() is False)")
        model = RandomTransformer(shapes, dtype, harness.device, harness.seed)
        pool = KVPool(
            shapes.layers,
            budget.num_blocks,
            budget.block_size,
            shapes.kv_heads,
            shapes.head_size,
            dtype,
            harness.device,
        )
        source = (
            KVSource(harness.source_rows, shapes.kv_heads, shapes.head_size, dtype, harness.device, harness.seed + 1)
            if harness.check
            else None
        )
        runner = mixed = None
        if harness.cuda_graphs:
            graphs = model.device.type == "cuda"
            # One context bucket, the model's max length, as the split-KV bound of every decode graph: the kernel
            # picks its split count from that bound, and with finer buckets a calibration batch of uniform lengths
            # (bound = its length: often no split) and a replay batch of the same total context but one long
            # sequence (bound 4,096: the split path and its reduce) ran different kernels; run 7's first call
            # measured replay decode iterations 5% slower than calibration said for the same tokens.
            runner = DecodeRunner(
                model,
                pool,
                source,
                [0, shapes.layers - 1],
                options.max_num_seqs,
                options.model.max_model_len,
                use_graphs=graphs,
                min_ctx_bucket=options.model.max_model_len,
            )
            if harness.prefill_graphs:
                mixed = MixedRunner(
                    model,
                    pool,
                    source,
                    [0, shapes.layers - 1],
                    options.max_num_seqs,
                    options.engine_config.batched_tokens_limit(options.model),
                    options.model.max_model_len,
                    use_graphs=graphs,
                    mempool=runner._mempool,
                )
        return cls(options, harness, budget, model, pool, source, runner, mixed)

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


def warm_up(run: GpuRun, force: bool = False) -> float:
    """Compile every kernel variant a replay can meet (Triton specialises on sizes: 1, multiples of 16, others),
    outside the measured loop. Returns seconds spent."""
    from kernels.harness.calibrate import SyntheticState, synthetic_batches
    from sim.allocators.contiguous import ContiguousOracle
    from sim.allocators.paged import PagedAllocator

    t0 = time.perf_counter()
    if not force and (not run.harness.warmup or run.model.device.type != "cuda"):
        return 0.0  # the interpreter compiles nothing; tests stay quick
    max_len = min(run.options.model.max_model_len, run.budget.capacity_tokens // 2)
    lens = sorted({x for x in (1, 2, 15, 16, 17, 33, 100, 300, 600, 1500, 2100, 5000) if x <= max_len})
    shapes = (
        [("decode", b, c) for b in (1, 3, 16, 17) for c in lens]
        + [("prefill", n, c) for n in (1, 16, 17, 300) for c in (0, 16, 17) if n + c <= max_len]
        + [("mixed", 64, 4), ("copy", 4, 0)]
    )
    for cls in (PagedAllocator, ContiguousOracle):  # block tables and extents: different kernel variants
        state = SyntheticState(run, allocator_cls=cls)
        for kind, a, b in shapes:
            for batch in synthetic_batches(state, kind, a, b):
                state.executor.execute(batch)
                state.release(batch)
    state = SyntheticState(run)
    if run.source is not None:  # the check path, once
        for batch in synthetic_batches(state, "decode", 2, 40):
            state.executor.check(state.executor.execute(batch, check=True).capture)
            state.release(batch)
    return time.perf_counter() - t0


def gpu_replay(trace: Trace, run: GpuRun, progress=None) -> HarnessResult:
    options, h = run.options, run.harness
    budget = run.budget
    allocator = LineageTracker(make_allocator(options, budget))
    limits = SchedulerLimits(options.max_num_seqs, options.engine_config.batched_tokens_limit(options.model))
    if not 0 <= options.beam_replace_prob <= 1:
        raise UserError(f"--beam-replace-prob must be in [0, 1], got {options.beam_replace_prob}")
    sched = Scheduler(allocator, limits, BeamModel(options.beam_replace_prob, options.seed))
    executor = run.executor(allocator, seed=h.seed)
    run.pool.kv.fill_(float("nan"))  # a slot nothing wrote reads as NaN, which the checks report
    bpt = budget.bytes_per_token
    max_len = options.model.max_model_len
    n = len(trace)
    num_branches, beam = branches_of(trace)
    arrival, prompt, output = trace.arrival_s, trace.prompt_tokens, trace.output_tokens
    req = RequestLog.empty(arrival, prompt, output, num_branches)
    steps = StepLog()
    gpu_s: list[float] = []
    host_s: list[float] = []
    issue_s: list[float] = []
    checks = CheckResult()
    trace_start = float(arrival[0]) if n else 0.0
    nxt = 0
    done = 0
    excluded = 0.0
    truncated = False
    if run.pool.kv.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0 - excluded + trace_start

    def take_arrivals(now: float) -> None:
        nonlocal nxt, done
        while nxt < n and arrival[nxt] <= now:
            i = nxt
            nxt += 1
            p, o = int(prompt[i]), int(output[i])
            reason = None
            if p + o > max_len:
                reason = f"prompt + output = {p + o:,} tokens exceeds the max model length of {max_len:,}"
            else:
                reason = allocator.never_fits(p + o - 1)
            if reason is not None:
                req.rejection[i] = reason
                done += 1
                continue
            sched.add(
                Sequence(
                    i,
                    p,
                    o,
                    float(arrival[i]),
                    num_branches=int(num_branches[i]),
                    beam=bool(beam[i]),
                    content=content_of(trace, i),
                )
            )

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
            now = clock()
            take_arrivals(now)
            if not sched.has_work():
                if nxt >= n:
                    break
                time.sleep(max(0.0, float(arrival[nxt]) - clock()))
                continue
            if h.time_limit_s is not None and time.perf_counter() - t0 > h.time_limit_s:
                truncated = True
                break
            start = clock()
            batch = sched.schedule(start)
            if not batch:
                seq = sched.waiting.popleft()
                req.rejection[seq.seq_id] = (
                    f"cannot be placed even in an empty KV cache ({seq.num_branches} "
                    f"sequences of up to {seq.final_len:,} tokens)"
                )
                done += 1
                continue
            m0 = time.perf_counter()
            mem = allocator.memory(sched.next_waiting_final_len())
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
            done += len(finished)
            iteration += 1
            if progress is not None:
                progress(done, n)
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
        **summary_header(allocator, budget, options, trace),
        **summarize(arrays, req, budget.capacity_bytes, trace_start),
        "sharing": sharing_summary(
            arrays,
            getattr(allocator.wrapped, "num_cow_copies", 0),
            sched.prefill_tokens_requested,
            sched.prefill_tokens_cached,
        ),
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
