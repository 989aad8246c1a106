"""Paged attention kernels: decode and prefill over a block-table KV cache (the contract is in kernels/README.md).

Modules, by job: ``common`` (helpers every kernel shares), ``decode_plan`` (decode tiles and the split-KV choice),
``decode`` (split-KV decode kernels and the decode entry points), ``decode_balanced`` (stream-K decode),
``prefill_plan`` (prefill tiles and options), ``prefill`` (Triton prefill kernels), ``prefill_hopper`` (the Gluon
warp-specialised prefill kernel for compute capability 9.x) and ``dispatch`` (the prefill entry point, which routes
between the Triton and Gluon kernels).
"""

from kernels.attention.decode import contiguous_decode_attention, paged_decode_attention
from kernels.attention.dispatch import paged_prefill_attention

__all__ = ["paged_decode_attention", "contiguous_decode_attention", "paged_prefill_attention"]
