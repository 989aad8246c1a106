"""Options shared by the `sim` subcommands, in one place: argparse types (each rejects a bad value with a message
naming it), the option groups of the replaying commands, and the ReplayOptions built from them."""

from __future__ import annotations

import argparse
import math

from sim.allocators import resolve_allocator
from sim.cost.roofline import DEFAULT_STEP_OVERHEAD_S
from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import KV_CACHE_DTYPES, resolve_model
from sim.serving.replay import ReplayOptions, host_tier_capable, validate_options
from sim.serving.schedulers import DEFAULT_SCHEDULER
from sim.traces.readers import READERS
from sim.units import format_bytes, parse_duration, parse_size

# The largest integer any option takes (int64's maximum): counts, sizes and limits beyond it mean nothing here and
# would overflow numpy's int64 arithmetic.
MAX_INT = 2**63 - 1
# Seeds feed numpy's PCG64: any integer in [0, 2^64).
MAX_SEED = 2**64 - 1


def positive_int(text: str) -> int:
    return _integer(text, 1, MAX_INT, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, MAX_INT, "an integer >= 0")


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2^64)."""
    return _integer(text, 0, MAX_SEED, "a seed, an integer in [0, 2^64)")


def _integer(text: str, minimum: int, maximum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"expected {what} no larger than {maximum:,}, got {_shown(text)}")
    return value


def _shown(text: str) -> str:
    """The value as a message shows it: quoted, and cut when it is very long."""
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text):,} characters)"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {_shown(text)}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {_shown(text)}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    return _bounded_float(text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def probability(text: str) -> float:
    """A number in [0, 1]."""
    return _bounded_float(text, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def _bounded_float(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
    if not ok(value):  # nan fails every comparison
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
    return value


def option_size(option: str, text: str) -> int:
    """`parse_size`, its error naming the option: '--kv-memory: cannot read size ...'."""
    try:
        return parse_size(text)
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None


def option_duration(option: str, text: str) -> float:
    """`parse_duration`, its error naming the option."""
    try:
        return parse_duration(text)
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None


def add_trace_options(p: argparse.ArgumentParser) -> None:
    """The trace argument and how it is read."""
    p.add_argument("trace", help="trace file (format detected from its header or first JSON record)")
    p.add_argument("--format", choices=sorted(READERS), help="force the trace format")
    p.add_argument(
        "--rate",
        type=positive_float,
        metavar="REQ_PER_S",
        help="length-only traces: requests/s of the Poisson arrivals to generate",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of every random choice: generated arrivals, the beam model; an integer in [0, 2^64) (default: 0)",
    )
    p.add_argument(
        "--model-filter", metavar="MODEL", help="BurstGPT traces: keep only this model's rows (e.g. ChatGPT, GPT-4)"
    )


def add_hardware_options(p: argparse.ArgumentParser, gpu_default: str = "a100-80gb") -> None:
    """Model, GPU, KV budget and engine limits: what `hardware_kwargs` reads."""
    p.add_argument(
        "--model",
        default="llama-2-7b",
        help="model preset (see `sim models`; any case, a config preset also by its Hugging Face repository, e.g. "
        "meta-llama/Llama-3.1-8B-Instruct), a Hugging Face config.json or a directory holding one (read offline), "
        "or dimensions 'layers=..,heads=..,kv_heads=..,head_size=..,params=..,max_len=..[,hidden=..,"
        "intermediate=..,vocab=..,kv_dtype=..]' (default: llama-2-7b)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="KV cache data type, as vLLM's option: auto (the model's dtype), bf16, fp16 or fp8 (default: auto)",
    )
    p.add_argument(
        "--gpu",
        default=gpu_default,
        help="GPU preset (see `sim gpus`; any case), a TOML file NAME.toml, or dimensions memory=..,bandwidth=..,"
        f"bf16_flops=..[,fp8_flops=..,host_link=..,price=..,name=..] (default: {gpu_default})",
    )
    p.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block (default: 16)")
    p.add_argument("--kv-memory", help="KV cache size per GPU, e.g. 12GiB (default: derived from the GPU)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=fraction,
        default=0.9,
        help="fraction of GPU memory the engine may use when deriving the KV size (default: 0.9)",
    )
    p.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel GPUs (default: 1)")
    p.add_argument("--max-model-len", type=positive_int, help="override the model's max length (tokens)")
    p.add_argument(
        "--max-num-seqs",
        type=positive_int,
        help="sequences per iteration (default: the scheduler's: vllm-v0 256; vllm-v1 1024 on GPUs of 70 GiB or "
        "more other than A100, else 256)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=positive_int,
        help="token budget of one iteration (default: the scheduler's: vllm-v0 max(max model length, 2048) prompt "
        "tokens; vllm-v1 8192 tokens on GPUs of 70 GiB or more other than A100, else 2048)",
    )


def add_policy_options(p: argparse.ArgumentParser) -> None:
    """How the replay runs: scheduler, allocator options, cost model, sharing, beams, fast-forward."""
    p.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        metavar="NAME",
        help="engine model: vllm-v1 (today's vLLM: one token budget, chunked prefill) or vllm-v0 (the 2023 "
        "paper's: whole prompts, prefills first), or your own class as package.module:ClassName "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--long-prefill-token-threshold",
        type=non_negative_int,
        default=0,
        metavar="TOKENS",
        help="vllm-v1: most prompt tokens one request computes per iteration (default: 0, no cap)",
    )
    p.add_argument(
        "--address-space",
        choices=["buddy", "first-fit"],
        help="contiguous allocators: the address-space policy that places reservations, buddy or first-fit "
        "(default: buddy)",
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
        type=probability,
        default=0.3,
        help="beam search model: probability that a beam is dropped and replaced by a fork of a "
        "surviving beam at each step (default: 0.3)",
    )
    p.add_argument(
        "--no-fast-forward",
        action="store_true",
        help="simulate every iteration one by one (the results are identical; this is slower)",
    )
    p.add_argument(
        "--host-kv-memory",
        metavar="SIZE",
        help="paged allocators: a host tier of this much host KV memory per GPU, e.g. 512GiB: the offloaded prefix "
        "cache (paged-prefix-cache) and --preemption swap (default: none)",
    )
    p.add_argument(
        "--host-link",
        metavar="LINK",
        help="the host tier's link, bytes/s each way: pcie4 (32e9), pcie5 (64e9), c2c (450e9) or a number "
        "(default: the GPU's host link, see `sim gpus`)",
    )
    p.add_argument(
        "--preemption",
        choices=["recompute", "swap"],
        default="recompute",
        help="what a preempted request's KV becomes: recomputed later, or swapped to the host tier and back "
        "(default: recompute)",
    )


def add_replay_options(p: argparse.ArgumentParser) -> None:
    """Every option of `sim replay` and `sim compare` but the allocator choice (also used by report and validate)."""
    add_trace_options(p)
    add_hardware_options(p)
    add_policy_options(p)
    p.add_argument("--out", help="output directory (default: a new directory under runs/)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def metric_percentiles(text: str) -> tuple[float, ...]:
    """vLLM's --metric-percentiles: comma-separated percentiles, each in [0, 100]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part.strip()!r}") from None
        if not 0 <= value <= 100:
            raise argparse.ArgumentTypeError(f"a percentile must be in [0, 100], got {part.strip()}")
        values.append(value)
    return tuple(values)


def add_metric_percentiles(p: argparse.ArgumentParser) -> None:
    """The percentiles of vllm-bench.json, under vLLM's option name."""
    p.add_argument(
        "--metric-percentiles",
        type=metric_percentiles,
        default=(99.0,),
        metavar="P[,P...]",
        help="percentiles of TTFT, TPOT, ITL and E2EL in vllm-bench.json, as vllm bench serve's option (default: 99)",
    )


def hardware_kwargs(args: argparse.Namespace) -> dict:
    """ReplayOptions fields from the options of `add_hardware_options`."""
    return dict(
        model=resolve_model(args.model, args.max_model_len, args.kv_cache_dtype),
        gpu=resolve_gpu(args.gpu),
        block_size=args.block_size,
        kv_memory=option_size("--kv-memory", args.kv_memory) if args.kv_memory else None,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tp=args.tp,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )


def replay_options(args: argparse.Namespace, allocator: str, family_options_only: bool = False) -> ReplayOptions:
    """The ReplayOptions of one allocator from the options of `add_replay_options` (checked: bad values raise a
    UserError that names the option before anything runs). family_options_only (several allocators side by side, as
    `sim sweep` does): --address-space goes to the contiguous allocators only and --no-sharing to the paged ones,
    instead of being refused for the others."""
    address_space, sharing = args.address_space, not args.no_sharing
    host = option_size("--host-kv-memory", args.host_kv_memory) if args.host_kv_memory else None
    host_link, preemption = args.host_link, args.preemption
    if family_options_only:
        cls = resolve_allocator(allocator)
        if not hasattr(cls, "address_space_policy"):
            address_space = None
        if not (getattr(cls, "grows_on_demand", False) and hasattr(cls, "retain_cached")):
            sharing = True
        if not host_tier_capable(allocator):
            host, host_link, preemption = None, None, "recompute"
    options = ReplayOptions(
        **hardware_kwargs(args),
        allocator=allocator,
        scheduler=args.scheduler,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        address_space=address_space,
        step_overhead_s=option_duration("--step-overhead", args.step_overhead),
        sharing=sharing,
        beam_replace_prob=args.beam_replace_prob,
        seed=args.seed,
        fast_forward=not args.no_fast_forward,
        cost_model=args.cost_model,
        host_kv_memory=host,
        host_link=host_link,
        preemption=preemption,
    )
    validate_options(options)
    return options


def print_header(trace, options: ReplayOptions) -> None:
    """What every replaying command prints first: the trace, the model and the KV budget."""
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
    engine = options.engine_config
    threshold = options.long_prefill_token_threshold
    cap = f", long_prefill_token_threshold {threshold:,}" if threshold else ""
    print(
        f"scheduler: {options.scheduler} (max_num_seqs {engine.max_num_seqs:,}, max_num_batched_tokens "
        f"{engine.batched_tokens_limit(options.model):,}{cap})"
    )
