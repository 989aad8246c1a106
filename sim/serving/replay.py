"""One replay, assembled from options: budget -> allocator -> scheduler -> cost model -> engine -> summary.

This is what the CLI (and later reports and sweeps) call; it holds no printing.

KV-cache groups: an allocator class with `uses_kv_groups` (`paged-hybrid`, `paged-hybrid-prefix-cache`) gets the
model's groups (`sim.hardware.kv_groups.kv_layout`) as `groups=` and a budget in pages of that layout
(`ReplayOptions.budget`, `sim.hardware.budget.kv_budget(layout=...)`); its replay records each group's memory
(`memory_by_group`) per iteration in steps.csv (`sim.records.steps.GroupStepLog`) and the groups' figures in the
summary (`kv_groups`, `sim.records.summary.kv_groups_summary`). Every other allocator, the contiguous ones included,
keeps every layer's KV at full length (windows are not applied), as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sim.allocators import KVAllocator, resolve_allocator
from sim.allocators.host_tier import HostTier
from sim.cost.host_link import HostLinkCost, resolve_host_link
from sim.cost.roofline import DEFAULT_STEP_OVERHEAD_S, RooflineCostModel, require_interconnect
from sim.errors import UserError
from sim.hardware.budget import EngineConfig, KVBudget, kv_budget
from sim.hardware.gpus import GpuSpec
from sim.hardware.kv_groups import KVLayout, kv_layout
from sim.hardware.models import ModelSpec
from sim.records.host_steps import HostStepLog
from sim.records.host_summary import host_tier_summary
from sim.records.requests import RequestLog
from sim.records.steps import GroupStepLog
from sim.records.summary import kv_groups_summary, sharing_summary, summarize
from sim.serving.beam import BeamModel
from sim.serving.engine import Engine
from sim.serving.intake import ProgressCallback
from sim.serving.schedulers import (
    DEFAULT_SCHEDULER,
    Scheduler,
    SchedulerLimits,
    VllmV0Scheduler,
    resolve_scheduler,
)
from sim.traces.model import Trace
from sim.units import MAX_DURATION_S


@dataclass
class ReplayOptions:
    model: ModelSpec
    gpu: GpuSpec
    allocator: str = "paged"
    block_size: int = 16
    kv_memory: int | None = None  # bytes; None: derived from the GPU
    gpu_memory_utilization: float = 0.9
    tp: int = 1
    scheduler: str = DEFAULT_SCHEDULER  # a registered scheduler model or package.module:ClassName
    max_num_seqs: int | None = None  # None: the scheduler's default for the GPU (default_limits)
    max_num_batched_tokens: int | None = None  # None: the scheduler's default for the GPU and model
    long_prefill_token_threshold: int = 0  # vllm-v1: most prompt tokens one request computes per iteration (0: any)
    address_space: str | None = None  # contiguous allocators: "buddy" (default) or "first-fit"
    step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S
    sharing: bool = True  # paged allocators: fork sharing, copy-on-write and shared prefixes (False: --no-sharing)
    beam_replace_prob: float = 0.3  # the beam model's per-step drop probability (see sim.serving.beam.BeamModel)
    seed: int = 0  # seeds the beam model
    fast_forward: bool = True  # compute quiet stretches of decode iterations in one step (exactly the same records)
    cost_model: str | None = None  # a calibration profile (JSON from `sim calibrate`); None: the roofline
    host_kv_memory: int | None = None  # bytes of host KV memory per GPU (sim.allocators.host_tier); None: no host tier
    host_link: str | float | None = None  # a name of sim.cost.host_link.HOST_LINKS or bytes/s; None: the GPU's own
    preemption: str = "recompute"  # or "swap" (needs a host tier)

    def host_link_spec(self):
        """The host link a host tier uses (sim.cost.host_link.resolve_host_link)."""
        return resolve_host_link(self.host_link, self.gpu.host_link_bandwidth, self.gpu.name)

    @property
    def engine_config(self) -> EngineConfig:
        """The limits the replay runs with: those given, else the scheduler model's defaults for this GPU."""
        cls = resolve_scheduler(self.scheduler)
        default_limits = getattr(cls, "default_limits", VllmV0Scheduler.default_limits)  # a user's class may lack it
        seqs, tokens = default_limits(self.model, self.gpu)
        return EngineConfig(
            seqs if self.max_num_seqs is None else self.max_num_seqs,
            tokens if self.max_num_batched_tokens is None else self.max_num_batched_tokens,
        )

    def kv_layout(self) -> KVLayout | None:
        """The model's KV-cache groups if the allocator takes them (`uses_kv_groups`), else None."""
        return kv_layout(self.model) if uses_kv_groups(self.allocator) else None

    def budget(self) -> KVBudget:
        """The KV budget; for an allocator that takes KV-cache groups, in pages of the model's layout (for a model
        of one attention kind the same blocks and bytes as every other allocator's)."""
        return kv_budget(
            self.model,
            self.gpu,
            self.block_size,
            self.kv_memory,
            self.gpu_memory_utilization,
            self.tp,
            self.engine_config,
            self.kv_layout(),
        )


def uses_kv_groups(allocator: str) -> bool:
    """Whether the allocator (a registered name or package.module:ClassName) takes the model's KV-cache groups."""
    return bool(getattr(resolve_allocator(allocator), "uses_kv_groups", False))


@dataclass
class ReplayResult:
    summary: dict
    steps: dict[str, np.ndarray]
    requests: RequestLog
    budget: KVBudget
    meta: dict = field(default_factory=dict)


def make_allocator(options: ReplayOptions, budget: KVBudget) -> KVAllocator:
    cls = resolve_allocator(options.allocator)
    kwargs: dict = {}
    if not options.sharing:
        if not getattr(cls, "grows_on_demand", False) or not hasattr(cls, "retain_cached"):
            raise UserError(f"--no-sharing applies to the paged allocators, not {options.allocator}")
        kwargs["sharing"] = False
    if options.address_space is not None:
        if not hasattr(cls, "address_space_policy"):
            raise UserError(f"--address-space applies to contiguous allocators, not {options.allocator}")
        kwargs["address_space"] = options.address_space
    if getattr(cls, "uses_kv_groups", False):
        layout = budget.layout if budget.layout is not None else kv_layout(options.model)
        kwargs["groups"] = layout.groups
    try:
        allocator = cls(budget.num_blocks, budget.block_size, options.model.max_model_len, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot create allocator {options.allocator}: {exc}") from None
    if options.host_kv_memory is not None:
        block_bytes = budget.block_size * budget.bytes_per_token
        allocator.attach_host(HostTier(options.host_kv_memory // block_bytes, block_bytes))
    return allocator


PREEMPTION_MODES = ("recompute", "swap")


def host_tier_capable(allocator: str) -> bool:
    """Whether the allocator can take a host tier: the paged allocators without KV-cache groups."""
    cls = resolve_allocator(allocator)
    return hasattr(cls, "attach_host") and not getattr(cls, "uses_kv_groups", False)


def validate_host_tier(options: ReplayOptions) -> None:
    """A host tier (--host-kv-memory, --host-link, --preemption swap) that a replay can use, or a UserError naming
    what is wrong."""
    if options.preemption not in PREEMPTION_MODES:
        raise UserError(f"--preemption must be one of {', '.join(PREEMPTION_MODES)}, got {options.preemption!r}")
    host = options.host_kv_memory
    if host is None:
        if options.preemption == "swap":
            raise UserError("--preemption swap needs a host tier to swap to: give --host-kv-memory")
        if options.host_link is not None:
            raise UserError("--host-link needs a host tier: give --host-kv-memory")
        return
    if not host_tier_capable(options.allocator):
        raise UserError(
            f"a host tier (--host-kv-memory, --preemption swap) works with paged and paged-prefix-cache, not "
            f"{options.allocator} (a contiguous allocator's extents, or KV-cache groups, are not swapped or offloaded "
            f"by this model)"
        )
    if not _is_int(host) or host <= 0:
        raise UserError(f"--host-kv-memory must be a positive number of bytes, got {host!r}")
    budget = options.budget()
    block_bytes = budget.block_size * budget.bytes_per_token
    if host < block_bytes:
        raise UserError(
            f"--host-kv-memory {host:,} B is smaller than one KV block ({block_bytes:,} B: {budget.block_size} "
            f"tokens x {budget.bytes_per_token:,} B)"
        )
    if options.preemption == "swap" and not hasattr(resolve_scheduler(options.scheduler), "_swap_in"):
        raise UserError(f"--preemption swap needs a scheduler that swaps (vllm-v0, vllm-v1), not {options.scheduler}")
    options.host_link_spec()


def make_cost_model(options: ReplayOptions):
    """The roofline from the GPU's datasheet, or the profile a calibration on a real GPU wrote (--cost-model); with
    a host tier, plus the link time of its copies (sim.cost.host_link.HostLinkCost): the link --host-link names, else
    the one the profile's calibration measured (`ProfileCostModel.host_link`), else the GPU's nominal host link."""
    compute = _compute_cost_model(options)
    if options.host_kv_memory is None:
        return compute
    measured = getattr(compute, "host_link", None) if options.host_link is None else None
    return HostLinkCost(compute, measured if measured is not None else options.host_link_spec())


def _compute_cost_model(options: ReplayOptions):
    if options.cost_model is None:
        return RooflineCostModel(options.model, options.gpu, options.tp, options.step_overhead_s)
    from sim.cost.profile import ProfileCostModel

    profile = ProfileCostModel.load(options.cost_model)
    calibrated = profile.meta.get("model")
    if calibrated and str(calibrated).lower() != options.model.name.lower():
        raise UserError(f"cost profile {options.cost_model} was calibrated for {calibrated}, not {options.model.name}")
    return profile


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_options(options: ReplayOptions) -> None:
    """Refuse option values that would crash a replay or silently give a wrong answer (each message names the
    option). The CLI's argparse types refuse most of them earlier; this is for callers that build ReplayOptions
    themselves (`sim sweep`, the library)."""
    if not _is_int(options.tp) or options.tp <= 0:
        raise UserError(f"--tp must be a positive integer, got {options.tp!r}")
    if options.cost_model is None:
        require_interconnect(options.gpu, options.tp)
    if options.max_num_seqs is not None and (not _is_int(options.max_num_seqs) or options.max_num_seqs <= 0):
        raise UserError(f"--max-num-seqs must be a positive integer, got {options.max_num_seqs!r}")
    if options.max_num_batched_tokens is not None and (
        not _is_int(options.max_num_batched_tokens) or options.max_num_batched_tokens <= 0
    ):
        raise UserError(f"--max-num-batched-tokens must be a positive integer, got {options.max_num_batched_tokens!r}")
    if not _is_int(options.block_size) or options.block_size <= 0:
        raise UserError(f"--block-size must be a positive integer, got {options.block_size!r}")
    if options.kv_memory is not None and (not _is_int(options.kv_memory) or options.kv_memory < 0):
        raise UserError(f"--kv-memory must be a number of bytes >= 0, got {options.kv_memory!r}")
    if not isinstance(options.step_overhead_s, (int, float)) or isinstance(options.step_overhead_s, bool):
        raise UserError(f"--step-overhead must be a duration, got {options.step_overhead_s!r}")
    if options.step_overhead_s < 0:
        raise UserError("--step-overhead must not be negative")
    if not options.step_overhead_s <= MAX_DURATION_S:  # inf and nan too
        raise UserError(f"--step-overhead must be at most {MAX_DURATION_S:g} s, got {options.step_overhead_s:g}")
    if not 0 <= options.beam_replace_prob <= 1:
        raise UserError(f"--beam-replace-prob must be in [0, 1], got {options.beam_replace_prob}")
    if not _is_int(options.seed) or not 0 <= options.seed < 2**64:
        raise UserError(f"--seed must be an integer in [0, 2^64), got {options.seed!r}")
    if not isinstance(options.sharing, bool):
        raise UserError(f"sharing must be true or false, got {options.sharing!r}")
    validate_kv_layout(options)
    validate_scheduler_options(options)
    validate_host_tier(options)


def validate_kv_layout(options: ReplayOptions) -> None:
    """The model's KV-cache layout is well formed (`sim.hardware.kv_groups.layer_kinds`: the layer pattern lists
    every layer, MLA has both dimensions of its latent, a sliding window is a positive number of tokens), each as a
    UserError that names the problem, and an fp8 KV cache needs a GPU with fp8 (`GpuSpec.fp8_flops`: vLLM stores
    fp8 KV on Ampere too, converting in software inside its attention kernels; that slower path is not modelled, so
    such a GPU is refused rather than priced as if it had fp8 hardware). For an allocator that
    takes the groups, also: the window is at most the max model length; the other allocators do not use the window,
    so a window beyond the max model length (a short --max-model-len) is no error for them."""
    model = options.model
    if model.kv_dtype == "fp8" and options.gpu.fp8_flops is None:
        raise UserError(
            f"an fp8 KV cache needs a GPU with fp8 support; {options.gpu.name} has none (no fp8_flops): give "
            f"--kv-cache-dtype bf16 or fp16 (auto keeps the model's kv_dtype, {model.kv_dtype} here), or a GPU "
            f"with fp8"
        )
    if not uses_kv_groups(options.allocator):
        w = model.sliding_window
        if isinstance(w, int) and not isinstance(w, bool) and w > model.max_model_len:
            model = replace(model, max_model_len=w)
    kv_layout(model)


def validate_scheduler_options(options: ReplayOptions) -> None:
    """The scheduler exists, gets only options it reads, and its token budget can run every request."""
    cls = resolve_scheduler(options.scheduler)
    threshold = options.long_prefill_token_threshold
    if not _is_int(threshold) or threshold < 0:
        raise UserError(f"--long-prefill-token-threshold must be an integer >= 0, got {threshold!r}")
    reads = getattr(cls, "options", frozenset())
    if threshold and "long_prefill_token_threshold" not in reads:
        raise UserError(f"--long-prefill-token-threshold applies to vllm-v1, not the {options.scheduler} scheduler")
    if not getattr(cls, "chunked_prefill", False):
        return
    limits = options.engine_config
    budget = limits.max_num_batched_tokens
    if budget < options.block_size:
        raise UserError(
            f"--max-num-batched-tokens {budget:,} is smaller than one KV block ({options.block_size} tokens): "
            f"{options.scheduler} could not fill a block in one iteration"
        )
    if budget < limits.max_num_seqs:
        raise UserError(
            f"--max-num-batched-tokens {budget:,} is smaller than --max-num-seqs {limits.max_num_seqs:,}: "
            f"{options.scheduler} could not give every running sequence its token (vLLM refuses this too)"
        )


def make_scheduler(options: ReplayOptions, allocator: KVAllocator) -> Scheduler:
    """The scheduler both clocks drive, over `allocator`, with the options' limits, beam model and preemption."""
    engine = options.engine_config
    limits = SchedulerLimits(
        engine.max_num_seqs, engine.batched_tokens_limit(options.model), options.long_prefill_token_threshold
    )
    scheduler = resolve_scheduler(options.scheduler)(
        allocator, limits, BeamModel(options.beam_replace_prob, options.seed)
    )
    if options.preemption != "recompute":
        scheduler.preemption = options.preemption
    return scheduler


def summary_header(allocator: KVAllocator, budget: KVBudget, options: ReplayOptions, trace: Trace) -> dict:
    """The identifying fields every summary starts with (simulator and GPU harness alike)."""
    return {
        "allocator": allocator.name,
        "block_size": budget.block_size,
        "model": options.model.name,
        "gpu": options.gpu.name,
        "trace": trace.path,
        "kv_capacity_bytes": budget.capacity_bytes,
        "kv_capacity_tokens": budget.capacity_tokens,
        "kv_blocks": budget.num_blocks,
    }


def replay_summary(
    allocator: KVAllocator,
    scheduler: Scheduler,
    budget: KVBudget,
    options: ReplayOptions,
    trace: Trace,
    steps: dict[str, np.ndarray],
    requests: RequestLog,
) -> dict:
    """The summary figures both clocks report for a finished replay: who ran, the figures of `summarize`, and the
    sharing figures."""
    return {
        **summary_header(allocator, budget, options, trace),
        **summarize(steps, requests, budget.capacity_bytes, float(trace.arrival_s[0]) if len(trace) else 0.0),
        "sharing": sharing_summary(
            steps,
            getattr(allocator, "num_cow_copies", 0),
            scheduler.prefill_tokens_requested,
            scheduler.prefill_tokens_cached,
        ),
    }


def replay(trace: Trace, options: ReplayOptions, progress: ProgressCallback | None = None) -> ReplayResult:
    validate_options(options)
    budget = options.budget()
    allocator = make_allocator(options, budget)
    scheduler = make_scheduler(options, allocator)
    limits = scheduler.limits
    cost = make_cost_model(options)
    engine = Engine(
        trace, scheduler, cost, budget.bytes_per_token, options.model.max_model_len, progress, options.fast_forward
    )
    layout = None
    if getattr(allocator, "uses_kv_groups", False) and hasattr(allocator, "memory_by_group"):
        layout = budget.layout if budget.layout is not None else kv_layout(options.model)
        engine.steps = GroupStepLog(len(layout.groups), budget.bytes_per_token)
    host = getattr(allocator, "host", None)
    if host is not None:
        engine.steps = HostStepLog(host)
    step_log, requests = engine.run()
    steps = step_log.arrays()
    summary = {
        **replay_summary(allocator, scheduler, budget, options, trace, steps, requests),
        "iterations_fast_forwarded": engine.num_fast_forwarded,
        "config": {
            "scheduler": scheduler.name,
            "tp": options.tp,
            "max_num_seqs": limits.max_num_seqs,
            "max_num_batched_tokens": limits.max_num_batched_tokens,
            "long_prefill_token_threshold": limits.long_prefill_token_threshold,
            "max_model_len": options.model.max_model_len,
            "kv_bytes_per_token": budget.bytes_per_token,
            "kv_budget_source": budget.source,
            "kv_budget_breakdown_bytes": budget.breakdown,
            "address_space": getattr(allocator, "address_space_name", None),
            "sharing": options.sharing,
            "beam_replace_prob": options.beam_replace_prob,
            "seed": options.seed,
            "cost_model": cost.describe(),
        },
    }
    if host is not None:
        summary["host_tier"] = host_tier_summary(
            host, cost, steps, scheduler.prefill_tokens_requested, budget.block_size, options.preemption
        )
        summary["config"]["host_kv_memory"] = options.host_kv_memory
        summary["config"]["preemption"] = options.preemption
    if layout is not None:
        summary["kv_groups"] = kv_groups_summary(steps, layout.groups, options.tp, budget.capacity_bytes)
        summary["config"]["kv_group_size"] = layout.group_size
        summary["config"]["kv_padding_layers"] = layout.padding_layers
    return ReplayResult(summary, steps, requests, budget)
