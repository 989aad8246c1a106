"""KV-cache groups: how vLLM V1's hybrid KV cache manager splits a model's layers into groups that share one pool of
equal-size pages, and the byte figures of those pages.

A KV-cache *group* is a set of layers of one attention kind that share one block table per request: a block id of
the group stands for `block_size` tokens of every layer of the group. Kinds:

- "full": full attention; a request keeps the KV of every token.
- "sliding_window": attention over the last `window` tokens; blocks that fall entirely out of the window are given
  back (`sim.allocators.hybrid`).
- "mla": multi-head latent attention (DeepSeek-V2/V3); one latent per token per layer, kept for every token.

Bytes per token per layer, on one GPU of a tensor-parallel group of `tp` (`KVGroup.bytes_per_token_per_layer`):

- full / sliding attention: 2 (K and V) x KV heads per GPU x head size x dtype bytes, with KV heads per GPU =
  max(1, KV heads // tp): heads are split over the GPUs and replicated when there are fewer than GPUs (vLLM
  `ModelConfig.get_num_kv_heads`: `max(1, total_num_kv_heads // tensor_parallel_size)`; page bytes as
  `AttentionSpec.page_size_bytes` in vllm/v1/kv_cache_interface.py: 2 x block_size x kv heads x head size x dtype).
- MLA: (kv_lora_rank + qk_rope_head_dim) x dtype bytes, whatever tp: the latent is shared by every head, so every GPU
  holds all of it (vLLM `get_num_kv_heads` returns 1 for MLA; `MLAAttentionSpec` stores one vector, no K/V pair).
- an fp8 KV cache stores 1 byte per value (half of bf16).

Grouping (vllm/v1/core/kv_cache_utils.py `_get_kv_cache_groups_uniform_page_size`, and
docs/design/hybrid_kv_cache_manager.md): layers are bucketed by attention kind in order of first appearance; the
group size is the smallest bucket's layer count, or the largest bucket's when that is under 1.5 x the smallest (too
little padding to be worth more groups); each bucket of n layers becomes ceil(n / group size) groups, layer i of the
bucket in group i mod (number of groups) (vLLM's strided split). A model of one kind is one group of all its layers.

Pages (`KVLayout`): every group's page must have the same bytes, so one block of the pool is `group size` layers x
`block_size` tokens x bytes per token per layer; the memory is `group size` tensors, each shared by one layer of
every group (vLLM `get_kv_cache_config_from_groups`), and num_blocks = KV memory // page bytes
(vLLM `get_num_blocks`: available memory // page size // group size). A group with fewer real layers than the group
size (Gemma-3-27B: 52 sliding layers in 6 groups of 10 slots) pads: its blocks carry `group size - layers` unused
layer pages (`KVLayout.padding_layers`). For a model of one kind the page is exactly `block_size x
ModelSpec.kv_bytes_per_token(tp)`, so every existing figure stays the same.

Simplifications: one window per model (every sliding layer has the model's `sliding_window`); every layer of a model
has the same bytes per token (true of every supported family: vLLM unifies differing page sizes by growing the block
size, which is not modelled); chunked local attention (Llama 4), Mamba layers, KV sharing across layers (Gemma-3n),
eagle drafter layers and sliding-window MLA are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError
from sim.hardware.model_spec import ModelSpec

FULL = "full"
SLIDING_WINDOW = "sliding_window"
MLA = "mla"
KINDS = (FULL, SLIDING_WINDOW, MLA)

# Hugging Face `layer_types` names -> group kinds.
LAYER_TYPES = {"full_attention": FULL, "sliding_attention": SLIDING_WINDOW}

# vLLM's heuristic: use the largest bucket as the group size when it is under this many times the smallest.
MAX_OVER_MIN_FOR_LARGEST = 1.5


@dataclass(frozen=True)
class KVGroup:
    """One KV-cache group: its attention kind, its window (sliding only), its layers (model layer indices), and what
    one token costs in each of its layers."""

    kind: str
    window: int | None
    layers: tuple[int, ...]
    kv_heads: int  # KV heads of one layer over all GPUs (MLA: 1, the latent)
    head_size: int  # values per head (MLA: kv_lora_rank + qk_rope_head_dim)
    dtype_bytes: int

    @property
    def num_layers(self) -> int:
        """Real layers of the group (padding excluded)."""
        return len(self.layers)

    @property
    def is_sliding(self) -> bool:
        return self.kind == SLIDING_WINDOW

    def kv_heads_per_gpu(self, tp: int = 1) -> int:
        """KV heads one GPU holds: split over tp, at least one (replicated when tp exceeds them); MLA: 1 whatever tp."""
        if self.kind == MLA:
            return 1
        return max(1, self.kv_heads // tp)

    def bytes_per_token_per_layer(self, tp: int = 1) -> int:
        """KV bytes one token takes in one layer of the group on one GPU (see the module docstring)."""
        if self.kind == MLA:
            return self.head_size * self.dtype_bytes
        return 2 * self.kv_heads_per_gpu(tp) * self.head_size * self.dtype_bytes

    def bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token takes in all the group's real layers on one GPU."""
        return self.num_layers * self.bytes_per_token_per_layer(tp)

    @property
    def label(self) -> str:
        """'full', 'mla' or 'sliding_window(128)'."""
        return f"{self.kind}({self.window})" if self.is_sliding else self.kind


@dataclass(frozen=True)
class KVLayout:
    """A model's KV-cache groups and the page every group's block shares (see the module docstring)."""

    groups: tuple[KVGroup, ...]
    group_size: int  # layer pages per block: the largest group's layer count (vLLM's KV tensors)

    @property
    def padding_layers(self) -> int:
        """Layer pages of a block that no layer uses, summed over the groups (0 when every group is full)."""
        return self.group_size * len(self.groups) - sum(g.num_layers for g in self.groups)

    @property
    def is_hybrid(self) -> bool:
        """More than one group (then blocks are taken per group)."""
        return len(self.groups) > 1

    def slot_bytes(self, tp: int = 1) -> int:
        """Bytes of one token slot of one block: group size x bytes per token per layer (uniform over the groups).
        For a model of one kind this is ModelSpec.kv_bytes_per_token(tp)."""
        return self.group_size * self.groups[0].bytes_per_token_per_layer(tp)

    def page_bytes(self, block_size: int, tp: int = 1) -> int:
        """Bytes of one block of the pool (vLLM's page size x group size)."""
        return block_size * self.slot_bytes(tp)

    def num_blocks(self, kv_memory: int, block_size: int, tp: int = 1) -> int:
        """Whole blocks of `kv_memory` bytes on one GPU."""
        return kv_memory // self.page_bytes(block_size, tp)

    def bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token takes in every real layer on one GPU, window ignored (padding excluded):
        ModelSpec.kv_bytes_per_token(tp)."""
        return sum(g.bytes_per_token(tp) for g in self.groups)


def layer_kinds(model: ModelSpec) -> tuple[str, ...]:
    """Each layer's group kind, validated: MLA for every layer of an MLA model; else from `layer_types`, or sliding
    on every layer when only `sliding_window` is set, or full on every layer."""
    name = model.name or "the model"
    if model.num_layers <= 0:
        raise UserError(f"{name}: the number of layers must be positive, got {model.num_layers}")
    if model.kv_lora_rank < 0 or model.qk_rope_head_dim < 0:
        raise UserError(
            f"{name}: MLA dimensions must not be negative (kv_lora_rank {model.kv_lora_rank}, qk_rope_head_dim "
            f"{model.qk_rope_head_dim})"
        )
    if model.is_mla:
        if model.qk_rope_head_dim == 0:
            raise UserError(
                f"{name}: an MLA model (kv_lora_rank {model.kv_lora_rank}) needs qk_rope_head_dim, the rotary part "
                f"of its latent; it is missing (0)"
            )
        if model.sliding_window is not None or "sliding_attention" in model.layer_types:
            raise UserError(f"{name}: sliding-window MLA is not modelled (an MLA model with a sliding window)")
        return (MLA,) * model.num_layers
    if model.qk_rope_head_dim:
        raise UserError(
            f"{name}: qk_rope_head_dim {model.qk_rope_head_dim} is set but kv_lora_rank is 0: MLA needs both "
            f"dimensions of its latent"
        )
    if model.layer_types:
        if len(model.layer_types) != model.num_layers:
            raise UserError(
                f"{name}: the layer pattern lists {len(model.layer_types)} layers but the model has {model.num_layers}"
            )
        unknown = sorted({t for t in model.layer_types if t not in LAYER_TYPES})
        if unknown:
            raise UserError(f"{name}: unknown layer types {unknown}; known: {', '.join(LAYER_TYPES)}")
        kinds = tuple(LAYER_TYPES[t] for t in model.layer_types)
    elif model.sliding_window is not None:
        kinds = (SLIDING_WINDOW,) * model.num_layers
    else:
        kinds = (FULL,) * model.num_layers
    if SLIDING_WINDOW in kinds:
        _check_window(model)
    return kinds


def _check_window(model: ModelSpec) -> None:
    name, w = model.name or "the model", model.sliding_window
    if w is None:
        raise UserError(f"{name}: the layer pattern has sliding-window layers but no sliding_window is given")
    if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
        raise UserError(f"{name}: the sliding window must be a positive number of tokens, got {w!r}")
    if w > model.max_model_len:
        raise UserError(
            f"{name}: the sliding window of {w:,} tokens is larger than the max model length {model.max_model_len:,} "
            f"(no sequence could ever leave it); give a larger --max-model-len or a model without the window"
        )


def kv_groups(model: ModelSpec) -> list[KVGroup]:
    """The model's KV-cache groups, formed as vLLM forms them (see the module docstring), in vLLM's order: the
    buckets in order of their first layer, each bucket's groups in order."""
    return list(kv_layout(model).groups)


def kv_layout(model: ModelSpec) -> KVLayout:
    """The model's KV-cache groups and their shared page (see the module docstring)."""
    kinds = layer_kinds(model)
    buckets: dict[str, list[int]] = {}
    for layer, kind in enumerate(kinds):
        buckets.setdefault(kind, []).append(layer)
    counts = [len(layers) for layers in buckets.values()]
    group_size = min(counts)
    if max(counts) < min(counts) * MAX_OVER_MIN_FOR_LARGEST:
        group_size = max(counts)
    if model.is_mla:
        heads, head_size = 1, model.kv_lora_rank + model.qk_rope_head_dim
    else:
        heads, head_size = model.num_kv_heads, model.head_size
    groups = []
    for kind, layers in buckets.items():
        num_groups = -(-len(layers) // group_size)
        window = model.sliding_window if kind == SLIDING_WINDOW else None
        for i in range(num_groups):
            groups.append(KVGroup(kind, window, tuple(layers[i::num_groups]), heads, head_size, model.kv_dtype_bytes))
    return KVLayout(tuple(groups), max(g.num_layers for g in groups))


def check_tp(model: ModelSpec, tp: int) -> None:
    """The tensor-parallel sizes vLLM accepts for the KV heads (as sim.hardware.budget.kv_budget checks them)."""
    if tp <= 0:
        raise UserError(f"--tp must be a positive integer, got {tp}")
    if not model.is_mla and tp > 1 and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UserError(f"--tp {tp} does not divide the {model.num_kv_heads} KV heads of {model.name}")


__all__ = [
    "FULL",
    "KINDS",
    "MLA",
    "SLIDING_WINDOW",
    "KVGroup",
    "KVLayout",
    "check_tp",
    "kv_groups",
    "kv_layout",
    "layer_kinds",
]
