"""The KV-cache budget on one GPU: engine limits (`EngineConfig`), the activation reserve, and `kv_budget`, which
turns a model, a GPU (or a given KV memory) and those limits into whole KV blocks (`KVBudget`).

Every byte figure is exact integer arithmetic; the derivation follows vLLM: GPU memory x utilization - weights -
activations - runtime overhead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.errors import UserError
from sim.hardware.gpus import GpuSpec
from sim.hardware.kv_groups import KVLayout
from sim.hardware.models import ModelSpec
from sim.units import GiB, ceil_div, format_bytes


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits (vLLM's names and defaults)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: max(max_model_len, 2048), as vLLM without chunked prefill

    def batched_tokens_limit(self, model: ModelSpec) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return max(model.max_model_len, 2048)


# The most KV blocks one GPU's cache may have. Allocators keep a few Python objects per block (about 140 B: 4.2M
# blocks take some 600 MB and two seconds to set up), so a budget beyond this — a tiny model on a large GPU, or a
# mistyped --kv-memory — is refused with the numbers rather than exhausting memory. Real configurations stay far
# below it: Llama-3-8B with an fp8 KV cache on an H200 holds about 100,000 blocks of 16 tokens.
MAX_KV_BLOCKS = 2**22

# Memory outside weights, activations and KV: CUDA context, cuBLAS / NCCL workspaces, CUDA graphs.
RUNTIME_OVERHEAD_BYTES = 1 * GiB
ACTIVATION_DTYPE_BYTES = 2
LOGITS_DTYPE_BYTES = 4


def activation_reserve_bytes(model: ModelSpec, engine: EngineConfig, tp: int = 1) -> int:
    """Peak activation memory of one forward pass at the batched-token limit, on one GPU (bytes).

    Per batched token: residual and normed hidden states (2 x hidden), the QKV projection ((q + 2 kv heads) x head
    size / tp) and the MLP gate, up and product (3 x intermediate / tp), in 2-byte activations; plus fp32 logits for
    max_num_seqs sequences. This is the figure vLLM measures by profiling a dummy batch; we compute it.
    """
    tokens = engine.batched_tokens_limit(model)
    per_token = (
        2 * model.hidden_size
        + (model.num_q_heads + 2 * model.num_kv_heads) * model.head_size // tp
        + 3 * model.intermediate_size // tp
    )
    return tokens * per_token * ACTIVATION_DTYPE_BYTES + engine.max_num_seqs * model.vocab_size * LOGITS_DTYPE_BYTES


@dataclass(frozen=True)
class KVBudget:
    """The KV cache on one GPU, in whole blocks. Every allocator gets the same capacity, so comparisons are fair.

    For an allocator that takes the model's KV-cache groups (`layout` set, `sim.hardware.kv_groups`), a block is one
    page of one group and `bytes_per_token` is the bytes of one token slot of a page, `KVLayout.slot_bytes(tp)`;
    the same KV memory then holds as many bytes, in pages. For a model of one attention kind that is exactly the
    budget of every other allocator."""

    block_size: int  # tokens per block
    num_blocks: int
    bytes_per_token: int  # KV bytes per token slot on one GPU (with a layout: per slot of one group's page)
    requested_bytes: int  # KV memory before rounding down to whole blocks
    source: str  # "given" (--kv-memory) or "derived" (GPU memory x utilization - weights - activations - runtime)
    breakdown: dict = field(default_factory=dict)  # bytes of each term when derived
    layout: KVLayout | None = None  # the KV-cache groups the blocks are pages of (None: one block holds every layer)
    tp: int = 1

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def capacity_bytes(self) -> int:
        return self.capacity_tokens * self.bytes_per_token

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.bytes_per_token

    def blocks_per_request(self, num_tokens: int) -> int:
        """Blocks one request of num_tokens tokens holds while it decodes: ceil(tokens / block size) in every group,
        except that a sliding-window group holds at most ceil((window + block size - 1) / block size) blocks once a
        decode step has let the older ones go (the window and the current token's block; `sim.allocators.hybrid`)."""
        n = ceil_div(num_tokens, self.block_size)
        if self.layout is None:
            return n
        return sum(
            min(n, ceil_div(g.window + self.block_size - 1, self.block_size)) if g.is_sliding else n
            for g in self.layout.groups
        )

    def describe(self, model: ModelSpec) -> str:
        """'KV cache: 983 blocks x 16 tokens = 15,728 tokens (12.00 GiB); max concurrency at 2,048 tokens ...'

        With KV-cache groups of more than one kind: the pages, the groups, and the concurrency at the max model length
        with each sliding group holding only its window (`blocks_per_request`)."""
        if self.layout is not None and self.layout.is_hybrid:
            groups = self.layout.groups
            kinds = ", ".join(f"{g.label} x{g.num_layers} layers" for g in groups)
            concurrency = self.num_blocks / self.blocks_per_request(model.max_model_len)
            return (
                f"KV cache: {self.num_blocks:,} pages x {self.block_size} tokens = {self.capacity_tokens:,} page slots "
                f"({format_bytes(self.capacity_bytes)}) in {len(groups)} KV-cache groups ({kinds}); every token "
                f"takes a slot in each group; max concurrency at {model.max_model_len:,} tokens per request, sliding "
                f"groups holding their window: {concurrency:.2f}x"
            )
        concurrency = self.capacity_tokens / model.max_model_len
        return (
            f"KV cache: {self.num_blocks:,} blocks x {self.block_size} tokens = {self.capacity_tokens:,} tokens "
            f"({format_bytes(self.capacity_bytes)}); max concurrency at {model.max_model_len:,} tokens per "
            f"request: {concurrency:.2f}x"
        )


def kv_budget(
    model: ModelSpec,
    gpu: GpuSpec | None,
    block_size: int = 16,
    kv_memory: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tp: int = 1,
    engine: EngineConfig = EngineConfig(),
    layout: KVLayout | None = None,
) -> KVBudget:
    """KV blocks per GPU, from --kv-memory or derived the way vLLM does it.

    layout: the model's KV-cache groups, for an allocator that takes them: blocks are then pages of
    `layout.page_bytes(block_size, tp)` bytes (vLLM `get_num_blocks`); None: blocks of every layer's KV."""
    if block_size <= 0:
        raise UserError(f"--block-size must be a positive number of tokens, got {block_size}")
    if tp <= 0:
        raise UserError(f"--tp must be a positive integer, got {tp}")
    if tp > 1 and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UserError(f"--tp {tp} does not divide the {model.num_kv_heads} KV heads of {model.name}")
    if tp > 1 and model.num_q_heads % tp:  # as vLLM requires: each GPU holds whole attention heads
        raise UserError(f"--tp {tp} does not divide the {model.num_q_heads} attention heads of {model.name}")
    per_token = model.kv_bytes_per_token(tp) if layout is None else layout.slot_bytes(tp)
    breakdown: dict[str, int] = {}
    if kv_memory is not None:
        requested, source = kv_memory, "given"
    else:
        if gpu is None:
            raise UserError("give --gpu or --kv-memory to size the KV cache")
        if not 0 < gpu_memory_utilization <= 1:
            raise UserError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
        usable = int(gpu.memory_bytes * gpu_memory_utilization)
        breakdown = {
            "gpu_memory": gpu.memory_bytes,
            "usable": usable,
            "weights": model.weight_bytes(tp),
            "activations": activation_reserve_bytes(model, engine, tp),
            "runtime": RUNTIME_OVERHEAD_BYTES,
        }
        requested = usable - breakdown["weights"] - breakdown["activations"] - breakdown["runtime"]
        breakdown["kv"] = requested
        source = "derived"
        terms = (
            f"usable {format_bytes(usable)} - weights {format_bytes(breakdown['weights'])} - activations "
            f"{format_bytes(breakdown['activations'])} (for {engine.batched_tokens_limit(model):,} batched tokens "
            f"and {engine.max_num_seqs:,} sequences: --max-num-batched-tokens, --max-model-len, --max-num-seqs) - "
            f"runtime {format_bytes(RUNTIME_OVERHEAD_BYTES)}"
        )
        if requested <= 0:
            raise UserError(
                f"{model.name} does not fit on {gpu.name} with tp={tp}: {terms} leaves no KV cache; try a larger "
                f"--tp, or smaller limits"
            )
        if requested < per_token * block_size:
            raise UserError(
                f"{model.name} on {gpu.name} with tp={tp}: {terms} leaves {format_bytes(requested)}, less than one "
                f"{block_size}-token block ({format_bytes(per_token * block_size)}); try a larger --tp, smaller "
                f"limits, a smaller --block-size or --kv-memory"
            )
    num_blocks = requested // (per_token * block_size)
    if num_blocks <= 0:
        raise UserError(
            f"KV memory {format_bytes(requested)} holds no {block_size}-token block "
            f"({format_bytes(per_token * block_size)} each)"
        )
    if num_blocks > MAX_KV_BLOCKS:
        least = -(-requested // (per_token * MAX_KV_BLOCKS))  # the block size that brings it within the maximum
        fix = (
            f"use --block-size {least:,} or more, or a smaller --kv-memory"
            if least <= 2**16
            else "give a smaller --kv-memory"
        )
        raise UserError(
            f"KV memory {format_bytes(requested)} holds {num_blocks:,} blocks of {block_size} tokens "
            f"({format_bytes(per_token * block_size)} each), more than the {MAX_KV_BLOCKS:,} this simulator "
            f"represents; {fix}"
        )
    return KVBudget(block_size, int(num_blocks), per_token, int(requested), source, breakdown, layout, tp)
