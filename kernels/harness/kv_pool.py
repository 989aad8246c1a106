"""The KV pool: the tensors holding every layer's K and V cache, indexed directly by the allocator's placements.

Layout: `kv[tensor, 0 or 1 (K or V), blocks, block_size, kv_heads, head_size]`. Per layer, `k(l)` and `v(l)` are the
paged caches `[blocks, block_size, kv_heads, head_size]` the kernels take, in the layer's tensor (`KVLayers.tensor`);
a token slot (block x block_size + offset, or start + position for a contiguous allocator's extent) is the same
address in both views, so paged and contiguous allocators share one pool of exactly the simulator's capacity
(num_blocks x block_size slots).

Which tensor a layer uses depends on the allocator (`KVLayers`, `kv_layers`):

* one block table for every layer (every allocator but the grouped ones): one tensor per layer, layer l in tensor l,
  and a block id stands for its slots in every layer (the simulator's block holds every layer's KV);
* KV-cache groups (`paged-hybrid`, `paged-hybrid-prefix-cache`; `sim.hardware.kv_groups`): vLLM's hybrid layout.
  One pool of pages shared by the groups; a page is `group size` layer pages, so there are `group size` tensors and
  layer i of every group lives in tensor i (vLLM `get_kv_cache_config_from_groups`). A block id belongs to one
  group at a time (the allocator takes it for that group), so the layers of different groups that share a tensor
  never share a block; a block's padding layer pages (a group with fewer layers than the group size) are never
  touched. Each layer reads and writes through its group's block table (`KVLayers.group`). The pool's bytes are the
  simulator's budget exactly (`KVLayout.page_bytes` x num_blocks), not num_layers x num_blocks pages.

Null block: a sliding-window group's block table holds placeholders (`sim.allocators.hybrid.NULL_BLOCK`, -1) where
the window gave blocks back. The kernels never read those positions (they start at the window's first key, block-table
entries included), but an entry must still address memory of the pool: a pool with a sliding-window group keeps one
extra block, the null block, just before block 0, and every per-layer view starts at block 0, so the placeholder -1
addresses the null block with no translation of the tables on the host (vLLM keeps a null block for the same purpose).
Nothing ever writes it: it stays NaN in check mode, so a kernel that read a placeholder would show NaN in the checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.cache_ops import copy_blocks
from sim.allocators.hybrid import NULL_BLOCK
from sim.hardware.kv_groups import SLIDING_WINDOW, KVLayout, layer_kinds
from sim.hardware.model_spec import ModelSpec


@dataclass(frozen=True)
class KVLayers:
    """Where each layer's KV lives and how it attends (layers the harness runs, in order).

    tensor: the pool tensor of each layer; group: the block table (index into the allocator's `block_tables`, 0 for
    an allocator of one table) each layer reads and writes; window: each layer's sliding window in tokens (None: full
    attention): a property of the model, applied whatever the allocator (vLLM runs the window's attention with or
    without the hybrid manager; only memory differs); num_groups: block tables per sequence; null_block: whether the
    pool keeps a null block (a grouped layout with a sliding-window group)."""

    tensor: tuple[int, ...]
    group: tuple[int, ...]
    window: tuple[int | None, ...]
    num_groups: int = 1
    null_block: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.tensor)

    @property
    def num_tensors(self) -> int:
        return max(self.tensor, default=-1) + 1

    @classmethod
    def plain(cls, num_layers: int, windows: tuple[int | None, ...] | None = None) -> KVLayers:
        """One tensor per layer, one block table (windows: None for every layer unless given)."""
        windows = (None,) * num_layers if windows is None else tuple(windows)
        return cls(tuple(range(num_layers)), (0,) * num_layers, windows)

    def check_layers(self) -> list[int]:
        """Layers the reference checks cover: the first and last, and the first of every (group, window) pair, so
        that every block table and every attention kind is checked."""
        n = self.num_layers
        firsts: dict[tuple, int] = {}
        for layer in range(n):
            firsts.setdefault((self.group[layer], self.window[layer]), layer)
        return sorted({0, n - 1, *firsts.values()})


def layer_windows(spec: ModelSpec, num_layers: int) -> tuple[int | None, ...]:
    """The sliding window of each of the first `num_layers` layers (None: full attention)."""
    kinds = layer_kinds(spec)
    return tuple(spec.sliding_window if kinds[i] == SLIDING_WINDOW else None for i in range(num_layers))


def kv_layers(spec: ModelSpec, num_layers: int, layout: KVLayout | None) -> KVLayers:
    """The layers' placement for a model run with `num_layers` of its layers (the first ones) and an allocator with
    the KV-cache groups `layout` (None: an allocator of one block table). See the module docstring."""
    windows = layer_windows(spec, num_layers)
    if layout is None:
        return KVLayers.plain(num_layers, windows)
    where: dict[int, tuple[int, int]] = {}
    for g, group in enumerate(layout.groups):
        for i, layer in enumerate(group.layers):
            where[layer] = (g, i)
    return KVLayers(
        tuple(where[layer][1] for layer in range(num_layers)),
        tuple(where[layer][0] for layer in range(num_layers)),
        windows,
        len(layout.groups),
        any(g.is_sliding for g in layout.groups),
    )


class KVPool:
    """The KV tensors of a run (see the module docstring).

    Args:
        num_layers: layers the harness runs (with `layers` None: one tensor each, one block table).
        num_blocks: the allocator's blocks (the simulator's budget); the pool has one more, the null block (before
            block 0), when `layers.null_block`.
        layers: the layers' tensors, block tables and windows (`kv_layers`); None: `KVLayers.plain(num_layers)`.
    """

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
        layers: KVLayers | None = None,
    ):
        self.layers = KVLayers.plain(num_layers) if layers is None else layers
        if self.layers.num_layers != num_layers:
            raise ValueError(f"the layer map covers {self.layers.num_layers} layers, the pool {num_layers}")
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.kv_heads, self.head_size = kv_heads, head_size
        self.num_slots = num_blocks * block_size
        #: the block id a block-table placeholder stands for (the null block before block 0), or None
        self.null_block = NULL_BLOCK if self.layers.null_block else None
        extra = 1 if self.null_block is not None else 0
        t = self.layers.num_tensors
        self._tensor = self.layers.tensor
        shape = (t, 2, extra + num_blocks, block_size, kv_heads, head_size)
        # NaN everywhere: a kernel that reads a slot nothing wrote produces NaN, which the checks report.
        self.storage = torch.full(shape, float("nan") if poison else 0.0, dtype=dtype, device=device)
        #: the allocator's blocks 0 .. num_blocks - 1 (every view below starts at block 0; -1 is the null block)
        self.kv = self.storage[:, :, extra:]
        self._slots = self.kv.view(t, 2, num_blocks * block_size, kv_heads, head_size)

    def fill(self, value: float) -> None:
        """Fill every block, the null block included (NaN before a checked replay)."""
        self.storage.fill_(value)

    def k(self, layer: int) -> torch.Tensor:
        return self.kv[self._tensor[layer], 0]

    def v(self, layer: int) -> torch.Tensor:
        return self.kv[self._tensor[layer], 1]

    def k_slots(self, layer: int) -> torch.Tensor:
        """`[num_slots, kv_heads, head_size]`: the flat view the contiguous decode kernel takes."""
        return self._slots[self._tensor[layer], 0]

    def v_slots(self, layer: int) -> torch.Tensor:
        return self._slots[self._tensor[layer], 1]

    def k_unit_blocks(self, layer: int) -> torch.Tensor:
        """`[num_slots, 1, kv_heads, head_size]`: the pool as blocks of one token, so the paged prefill kernel can
        read an extent through a block table `start, start + 1, ...`."""
        return self._slots[self._tensor[layer], 0].unsqueeze(1)

    def v_unit_blocks(self, layer: int) -> torch.Tensor:
        return self._slots[self._tensor[layer], 1].unsqueeze(1)

    def copy_blocks(self, mapping: torch.Tensor) -> None:
        """`cache[dst] = cache[src]` for every (src, dst) row, in every tensor's K and V (one launch): every layer of
        the block's group (with groups, a block belongs to one group, whose layers are one per tensor)."""
        copy_blocks(self.kv, mapping, block_dim=2)

    def copy_slots(self, src: int, dst: int, length: int) -> None:
        """Copy `length` token slots from `src` to `dst` in every layer's K and V (a contiguous allocator's fork)."""
        self._slots[:, :, dst : dst + length].copy_(self._slots[:, :, src : src + length])

    def read_slots(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows at token slots (for tests and debugging)."""
        t = self._tensor[layer]
        return self._slots[t, 0][slots], self._slots[t, 1][slots]

    def poison_blocks(self, blocks) -> None:
        """Fill blocks with NaN in every tensor (tests: blocks given back, which nothing may read any more)."""
        idx = torch.as_tensor(list(blocks), dtype=torch.int64, device=self.kv.device)
        if len(idx):
            self.kv.index_fill_(2, idx, float("nan"))

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()
