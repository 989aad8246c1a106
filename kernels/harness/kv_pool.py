"""The KV pool: one tensor holding every layer's K and V cache, indexed directly by the allocator's placements.

Layout: `kv[layer, 0 or 1 (K or V), num_blocks, block_size, kv_heads, head_size]`. Per layer, `k(l)` and `v(l)` are
the paged caches `[num_blocks, block_size, kv_heads, head_size]` the kernels take; a token slot (block x block_size +
offset, or start + position for a contiguous allocator's extent) is the same address in both views, so paged and
contiguous allocators share one pool of exactly the simulator's capacity (num_blocks x block_size slots).
"""

from __future__ import annotations

import torch

from kernels.cache_ops import copy_blocks


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_size: int,
        dtype: torch.dtype,
        device,
        poison: bool = True,
    ):
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.kv_heads, self.head_size = kv_heads, head_size
        self.num_slots = num_blocks * block_size
        shape = (num_layers, 2, num_blocks, block_size, kv_heads, head_size)
        # NaN everywhere: a kernel that reads a slot nothing wrote produces NaN, which the checks report.
        self.kv = torch.full(shape, float("nan") if poison else 0.0, dtype=dtype, device=device)
        self._slots = self.kv.view(num_layers, 2, self.num_slots, kv_heads, head_size)

    def k(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 0]

    def v(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 1]

    def k_slots(self, layer: int) -> torch.Tensor:
        """`[num_slots, kv_heads, head_size]`: the flat view the contiguous decode kernel takes."""
        return self._slots[layer, 0]

    def v_slots(self, layer: int) -> torch.Tensor:
        return self._slots[layer, 1]

    def k_unit_blocks(self, layer: int) -> torch.Tensor:
        """`[num_slots, 1, kv_heads, head_size]`: the pool as blocks of one token, so the paged prefill kernel can
        read an extent through a block table `start, start + 1, ...`."""
        return self._slots[layer, 0].unsqueeze(1)

    def v_unit_blocks(self, layer: int) -> torch.Tensor:
        return self._slots[layer, 1].unsqueeze(1)

    def copy_blocks(self, mapping: torch.Tensor) -> None:
        """`cache[dst] = cache[src]` for every (src, dst) row, in every layer's K and V (one launch)."""
        copy_blocks(self.kv, mapping, block_dim=2)

    def copy_slots(self, src: int, dst: int, length: int) -> None:
        """Copy `length` token slots from `src` to `dst` in every layer's K and V (a contiguous allocator's fork)."""
        self._slots[:, :, dst : dst + length].copy_(self._slots[:, :, src : src + length])

    def read_slots(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows at token slots (for tests and debugging)."""
        return self._slots[layer, 0][slots], self._slots[layer, 1][slots]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()
