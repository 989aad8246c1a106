"""`ModelSpec`: what the simulator needs to know of a model (shapes, parameters, dtypes), and its byte figures.

Kept apart from the presets and their lookup (`sim.hardware.models`) so that the Hugging Face config reader
(`sim.hardware.hf_config`), which builds specs and supplies presets, imports it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """Transformer shapes that decide KV size, weight size and FLOPs.

    The fields after `source` are optional and describe what a Hugging Face config adds (`sim.hardware.hf_config`):
    mixture-of-experts parameters, MLA's latent KV cache, sliding windows and quantized weights. Their defaults leave
    every figure of a dense model as it was.
    """

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
    # Parameters one token computes with (and one step reads): a mixture of experts uses its shared experts and top-k
    # routed experts only. None: num_params (a dense model); set to it on construction.
    active_params: int | None = None
    # MLA (DeepSeek-V2/V3): the KV cache holds one latent of kv_lora_rank + qk_rope_head_dim values per layer per
    # token instead of K and V per KV head. 0: standard attention.
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    # Values per head of V where they differ from head_size's K width (MLA: v_head_dim 128 against K's nope + rope
    # 192). 0: head_size. Used only for the full-attention KV an MLA model would need (sim.hardware.design_capacity).
    v_head_dim: int = 0
    # Sliding-window attention, recorded for the KV designs: the window (tokens) and each layer's kind
    # ("sliding_attention" or "full_attention"; empty: every layer full, or sliding_window on every layer when set).
    # kv_bytes_per_token counts every layer in full.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    # Mixture of experts as configured (0: dense): routed experts, experts per token, shared experts, expert width.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    architecture: str = ""  # the config's architectures[0]
    # Quantized checkpoints ("fp8", "mxfp4", ...): weight bytes computed from the parameter groups, which replace
    # num_params (active_params) x weight dtype bytes. None: not quantized.
    quantization: str = ""
    weight_bytes_total: int | None = field(default=None, repr=False)
    active_weight_bytes_total: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.active_params is None:
            object.__setattr__(self, "active_params", self.num_params)

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3): one compressed latent per layer per token."""
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads held by one GPU under tensor parallelism; replicated when tp exceeds the head count (as vLLM)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token occupies on one GPU: 2 (K, V) x layers x KV heads x head size x dtype bytes.

        MLA: layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes, whatever tp: the latent is shared by every
        head, so each GPU of a tensor-parallel group holds all of it (as vLLM does)."""
        if self.is_mla:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_size * self.kv_dtype_bytes

    def weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes on one GPU (weights split evenly over tp GPUs): every parameter, all experts included."""
        if self.weight_bytes_total is not None:
            return self.weight_bytes_total // tp
        return self.num_params * DTYPE_BYTES[self.weight_dtype] // tp

    def active_weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes one step reads on one GPU: those of the active parameters (all of them for a dense model)."""
        if self.active_weight_bytes_total is not None:
            return self.active_weight_bytes_total // tp
        if self.active_params == self.num_params:
            return self.weight_bytes(tp)
        return self.active_params * DTYPE_BYTES[self.weight_dtype] // tp
