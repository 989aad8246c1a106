"""Models, GPUs, engine limits and the KV-cache budget that follows from them.

Every byte figure here is exact integer arithmetic so that, e.g., OPT-13B's KV cache costs exactly 819,200 B per token
(2 (K and V) x 40 layers x 40 KV heads x 128 head size x 2 B).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sim.errors import UserError
from sim.units import format_bytes

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """Transformer shapes that decide KV size, weight size and FLOPs."""

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    num_params: int  # parameters (weights), all GPUs together
    max_model_len: int  # tokens, prompt + output
    kv_dtype: str = "fp16"
    weight_dtype: str = "fp16"
    source: str = ""

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads held by one GPU under tensor parallelism; replicated when tp exceeds the head count (as vLLM)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token occupies on one GPU: 2 (K, V) x layers x KV heads x head size x dtype bytes."""
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_size * self.kv_dtype_bytes

    def weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes on one GPU (weights split evenly over tp GPUs)."""
        return self.num_params * DTYPE_BYTES[self.weight_dtype] // tp


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures."""

    name: str
    memory_bytes: int  # device memory, bytes
    hbm_bandwidth: float  # bytes / s
    bf16_flops: float  # dense bf16 tensor FLOP / s
    source: str = ""


def _model(name, layers, hidden, heads, kv_heads, head, inter, vocab, params, max_len, kv="fp16", src=""):
    return ModelSpec(name, layers, hidden, heads, kv_heads, head, inter, vocab, params, max_len, kv, kv, src)


# Shapes from each model's published config.json; parameter counts as published by the model authors.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _model("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, 12_853_473_280, 2048, src="facebook/opt-13b"),
        _model("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616, 4096, src="meta-llama/Llama-2-7b-hf"),
        _model(
            "llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 13_015_864_320, 4096, src="meta-llama/Llama-2-13b-hf"
        ),
        _model(
            "llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 68_976_648_192, 4096, src="meta-llama/Llama-2-70b-hf"
        ),
        _model(
            "llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 8192, "bf16", "meta-llama/Meta-Llama-3-8B"
        ),
        _model(
            "llama-3-70b",
            80,
            8192,
            64,
            8,
            128,
            28672,
            128256,
            70_553_706_496,
            8192,
            "bf16",
            "meta-llama/Meta-Llama-3-70B",
        ),
        _model(
            "mistral-7b", 32, 4096, 32, 8, 128, 14336, 32000, 7_241_732_096, 32768, "bf16", "mistralai/Mistral-7B-v0.3"
        ),
    )
}

GiB = 2**30
# Vendor datasheets: memory as the driver reports it, peak HBM bandwidth, dense (no sparsity) bf16 tensor throughput.
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("a100-40gb", 40 * GiB, 1.555e12, 312e12, "NVIDIA A100 datasheet (SXM4 40GB)"),
        GpuSpec("a100-80gb", 80 * GiB, 2.039e12, 312e12, "NVIDIA A100 datasheet (SXM4 80GB)"),
        GpuSpec("h100-80gb", 80 * GiB, 3.35e12, 989.4e12, "NVIDIA H100 datasheet (SXM5)"),
        GpuSpec("h200", 141 * 10**9, 4.8e12, 989.4e12, "NVIDIA H200 datasheet (SXM)"),
        GpuSpec("l40s", 48 * 10**9, 0.864e12, 362.05e12, "NVIDIA L40S datasheet"),
    )
}

_MODEL_KEYS = {
    "layers": int,
    "hidden": int,
    "heads": int,
    "kv_heads": int,
    "head_size": int,
    "intermediate": int,
    "vocab": int,
    "params": float,
    "max_len": int,
    "kv_dtype": str,
    "name": str,
}


def resolve_model(text: str, max_model_len: int | None = None) -> ModelSpec:
    """A preset name, or dimensions 'layers=32,kv_heads=8,head_size=128,params=8e9,max_len=8192[,...]'."""
    if "=" in text:
        spec = _model_from_dims(text)
    elif text in MODELS:
        spec = MODELS[text]
    else:
        raise UserError(
            f"unknown model {text!r}; presets: {', '.join(MODELS)} "
            f"(or give dimensions: layers=..,kv_heads=..,head_size=..,params=..,max_len=..)"
        )
    if max_model_len is not None:
        if max_model_len < 2:
            raise UserError(f"--max-model-len must be at least 2, got {max_model_len}")
        spec = replace(spec, max_model_len=max_model_len)
    return spec


def _model_from_dims(text: str) -> ModelSpec:
    values: dict[str, object] = {}
    for item in text.split(","):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in _MODEL_KEYS:
            raise UserError(f"unknown model dimension {key!r}; known: {', '.join(_MODEL_KEYS)}")
        try:
            values[key] = _MODEL_KEYS[key](raw.strip())
        except ValueError:
            raise UserError(f"model dimension {key} must be a number, got {raw.strip()!r}") from None
    missing = [k for k in ("layers", "kv_heads", "head_size", "params", "max_len") if k not in values]
    if missing:
        raise UserError(f"model dimensions missing: {', '.join(missing)}")
    kv_dtype = str(values.get("kv_dtype", "bf16"))
    if kv_dtype not in DTYPE_BYTES:
        raise UserError(f"kv_dtype must be one of {', '.join(DTYPE_BYTES)}, got {kv_dtype!r}")
    heads = int(values.get("heads", values["kv_heads"]))
    head_size = int(values["head_size"])
    hidden = int(values.get("hidden", heads * head_size))
    for key in ("layers", "kv_heads", "head_size", "max_len"):
        if int(values[key]) <= 0:
            raise UserError(f"model dimension {key} must be positive")
    if heads % int(values["kv_heads"]):
        raise UserError("heads must be a multiple of kv_heads")
    return ModelSpec(
        name=str(values.get("name", "custom")),
        num_layers=int(values["layers"]),
        hidden_size=hidden,
        num_q_heads=heads,
        num_kv_heads=int(values["kv_heads"]),
        head_size=head_size,
        intermediate_size=int(values.get("intermediate", 4 * hidden)),
        vocab_size=int(values.get("vocab", 32000)),
        num_params=int(float(values["params"])),
        max_model_len=int(values["max_len"]),
        kv_dtype=kv_dtype,
        weight_dtype="bf16",
        source="command line",
    )


def resolve_gpu(name: str) -> GpuSpec:
    if name not in GPUS:
        raise UserError(f"unknown GPU {name!r}; presets: {', '.join(GPUS)}")
    return GPUS[name]


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits (vLLM's names and defaults)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: max(max_model_len, 2048), as vLLM without chunked prefill

    def batched_tokens_limit(self, model: ModelSpec) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return max(model.max_model_len, 2048)


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
    """The KV cache on one GPU, in whole blocks. Every allocator gets the same capacity, so comparisons are fair."""

    block_size: int  # tokens per block
    num_blocks: int
    bytes_per_token: int  # KV bytes per token on one GPU
    requested_bytes: int  # KV memory before rounding down to whole blocks
    source: str  # "given" (--kv-memory) or "derived" (GPU memory x utilization - weights - activations - runtime)
    breakdown: dict = field(default_factory=dict)  # bytes of each term when derived

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def capacity_bytes(self) -> int:
        return self.capacity_tokens * self.bytes_per_token

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.bytes_per_token

    def describe(self, model: ModelSpec) -> str:
        """'KV cache: 983 blocks x 16 tokens = 15,728 tokens (12.00 GiB); max concurrency at 2,048 tokens ...'"""
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
) -> KVBudget:
    """KV blocks per GPU, from --kv-memory or derived the way vLLM does it."""
    if block_size <= 0:
        raise UserError(f"--block-size must be a positive number of tokens, got {block_size}")
    if tp <= 0:
        raise UserError(f"--tp must be a positive integer, got {tp}")
    if tp > 1 and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UserError(f"--tp {tp} does not divide the {model.num_kv_heads} KV heads of {model.name}")
    per_token = model.kv_bytes_per_token(tp)
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
        if requested <= 0:
            raise UserError(
                f"{model.name} does not fit on {gpu.name} with tp={tp}: usable {format_bytes(usable)} - weights "
                f"{format_bytes(breakdown['weights'])} - activations {format_bytes(breakdown['activations'])} - "
                f"runtime {format_bytes(RUNTIME_OVERHEAD_BYTES)} leaves no KV cache; try a larger --tp"
            )
    num_blocks = requested // (per_token * block_size)
    if num_blocks <= 0:
        raise UserError(
            f"KV memory {format_bytes(requested)} holds no {block_size}-token block "
            f"({format_bytes(per_token * block_size)} each)"
        )
    return KVBudget(block_size, int(num_blocks), per_token, int(requested), source, breakdown)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
