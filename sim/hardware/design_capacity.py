"""How many requests of one length a model's KV design holds in a KV memory, against the same model with
full-attention KV: the "how many more concurrent requests" figure of `sim compare` for the grouped allocators.

Full-attention KV: every layer keeps K and V of every token for each KV head, the heads split over the GPUs of a
tensor-parallel group (ModelSpec.kv_heads_per_gpu):

    bytes per token on one GPU = layers x KV heads per GPU x (K width + V width) x KV dtype bytes

For a model without MLA the K and V widths are both head_size, and this is ModelSpec.kv_bytes_per_token (a window
is not applied). For an MLA model it is the K and V its heads compute from the latent, the multi-head attention the
DeepSeek-V2 paper (arXiv 2405.04434, section 2.1 and Table 1) compares MLA with: K of qk_nope_head_dim +
qk_rope_head_dim values (head_size here) and V of v_head_dim values per head. DeepSeek-V3 at tp=8: 61 layers x 16
heads x (192 + 128) x 2 B = 624,640 B per token per GPU, against 61 x 576 x 2 = 70,272 B of latent, which every GPU
holds whole.

The design: the model's KV-cache groups (sim.hardware.kv_groups.kv_layout) in one pool of equal pages
(`KVLayout.num_blocks`). A request at its largest, `tokens` tokens long, holds ceil(tokens / block) pages in a full or
MLA group, and min(ceil(tokens / block), ceil((window + block - 1) / block)) in a sliding group (the pages under its
last `window` tokens, which may straddle one page boundary more than window / block). Full-attention KV: blocks of
`block` tokens of full-attention bytes, ceil(tokens / block) per request. Each count is whole requests that fit at
their largest together, rounded down.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.hardware.kv_groups import kv_layout
from sim.hardware.model_spec import ModelSpec
from sim.units import ceil_div


def full_attention_bytes_per_token(model: ModelSpec, tp: int = 1) -> int:
    """KV bytes one token takes on one GPU with full-attention KV (see the module docstring)."""
    k_width = model.head_size
    v_width = model.v_head_dim or model.head_size
    return model.num_layers * model.kv_heads_per_gpu(tp) * (k_width + v_width) * model.kv_dtype_bytes


def design_pages_per_request(model: ModelSpec, tokens: int, block_size: int) -> int:
    """Pages of the design's pool one request of `tokens` tokens holds at its largest, over every group."""
    blocks = ceil_div(tokens, block_size)
    pages = 0
    for group in kv_layout(model).groups:
        if group.is_sliding:
            pages += min(blocks, ceil_div(group.window + block_size - 1, block_size))
        else:
            pages += blocks
    return pages


@dataclass(frozen=True)
class DesignCapacity:
    """Requests of `tokens` tokens that `kv_memory` bytes on one GPU hold: the design's and full-attention KV's."""

    tokens: int  # one request's length at its largest (prompt + output), tokens
    kv_memory: int  # bytes on one GPU
    design_requests: int
    full_attention_requests: int
    design_bytes_per_request: int  # pages held x page bytes
    full_attention_bytes_per_request: int  # blocks held x block bytes

    @property
    def gain(self) -> float | None:
        """design_requests / full_attention_requests; None when full-attention KV holds none."""
        return self.design_requests / self.full_attention_requests if self.full_attention_requests else None


def design_capacity(model: ModelSpec, kv_memory: int, block_size: int, tokens: int, tp: int = 1) -> DesignCapacity:
    """The design's and full-attention KV's requests of `tokens` tokens in `kv_memory` bytes (module docstring)."""
    if tokens <= 0 or block_size <= 0 or kv_memory < 0:
        raise ValueError(f"tokens and block_size must be positive and kv_memory >= 0: {tokens}, {block_size}")
    layout = kv_layout(model)
    pages = layout.num_blocks(kv_memory, block_size, tp)
    per_request = design_pages_per_request(model, tokens, block_size)
    full_block = block_size * full_attention_bytes_per_token(model, tp)
    blocks = ceil_div(tokens, block_size)
    return DesignCapacity(
        tokens=tokens,
        kv_memory=kv_memory,
        design_requests=pages // per_request,
        full_attention_requests=kv_memory // full_block // blocks,
        design_bytes_per_request=per_request * layout.page_bytes(block_size, tp),
        full_attention_bytes_per_request=blocks * full_block,
    )


__all__ = ["DesignCapacity", "design_capacity", "design_pages_per_request", "full_attention_bytes_per_token"]
