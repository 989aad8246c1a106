"""The physical blocks of a paged KV cache: a free queue in eviction order, reference counts, and the index of full
blocks by content hash (the prefix cache's lookup table; the keys come from `sim.allocators.prefix_hash`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from sim.allocators.base import AllocationError


class BlockPool:
    """Physical blocks: reference counts, a free queue, and an index of full blocks by content hash.

    The free queue holds every block at reference count 0, least recently freed first; `allocate` takes the front.
    With `retain_cached`, a freed block keeps its hash (it is *cached*) until it is allocated again (evicted) or hit;
    without it, a freed block leaves the index at once (and the queue is a plain deque, which is faster).

    Callers use only the public methods; the paged allocator's hot loops take `front_popper()` and `ref_counts` into
    locals, so that a round costs no method call per block.
    """

    def __init__(self, num_blocks: int, retain_cached: bool = False):
        self.num_blocks = num_blocks
        self.retain_cached = retain_cached
        self.ref_counts = [0] * num_blocks
        self._free: OrderedDict[int, None] | deque[int] = (
            OrderedDict((b, None) for b in range(num_blocks)) if retain_cached else deque(range(num_blocks))
        )
        self.block_hash: dict[int, Hashable] = {}  # registered block -> its content hash
        self.hash_block: dict[Hashable, int] = {}  # content hash -> block
        self.num_evictions = 0
        # called with (content hash, block) when cached content is evicted (sim.allocators.host_tier keeps it)
        self.on_evict: Callable[[Hashable, int], None] | None = None

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def free_block_ids(self) -> list[int]:
        """Free blocks in eviction order (the next to be allocated first)."""
        return list(self._free)

    def cached_free_blocks(self) -> list[int]:
        """Free blocks that still hold indexed content (prefix cache), in eviction order."""
        return [b for b in self._free if b in self.block_hash]

    def reorder_free(self, order: list[int]) -> None:
        """Put the free queue in `order`, a permutation of the free blocks (the next to be allocated first); for
        tests and calibration that want scattered block ids."""
        if sorted(order) != sorted(self._free):
            raise ValueError("reorder_free needs a permutation of the free blocks")
        self._free.clear()
        if self.retain_cached:
            self._free.update(dict.fromkeys(order))
        else:
            self._free.extend(order)

    def front_popper(self) -> Callable[[], int]:
        """For hot loops of a pool without a cache: a function that removes and returns the front free block, like
        `allocate` but without its checks and without setting the reference count, which the caller sets to 1 at
        once. The caller has checked `num_free_blocks`."""
        if self.retain_cached:
            raise ValueError("front_popper is for pools without a prefix cache (allocation may evict)")
        return self._free.popleft

    def allocate(self) -> int:
        if not self._free:
            raise AllocationError("no free KV block")
        if not self.retain_cached:
            block = self._free.popleft()
        else:  # rounds take one block per crossing sequence
            # Deliberate copy of allocate_many(1) for speed;
            # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
            block, _ = self._free.popitem(last=False)
            h = self.block_hash.pop(block, None)
            if h is not None:  # evict the cached content
                del self.hash_block[h]
                self.num_evictions += 1
                if self.on_evict is not None:
                    self.on_evict(h, block)
        self.ref_counts[block] = 1
        return block

    def allocate_many(self, count: int) -> list[int]:
        """`count` blocks from the front of the free queue, each at reference count 1 (as many allocate calls)."""
        if count > len(self._free):
            raise AllocationError(f"{count} KV blocks wanted, {len(self._free)} free")
        refs = self.ref_counts
        if not self.retain_cached:
            popleft = self._free.popleft
            blocks = [popleft() for _ in range(count)]
        else:
            popitem = self._free.popitem
            blocks = [popitem(False)[0] for _ in range(count)]
            if self.block_hash:
                pop, hash_block = self.block_hash.pop, self.hash_block
                evicted = 0
                on_evict = self.on_evict
                for block in blocks:
                    h = pop(block, None)
                    if h is not None:  # evict the cached content
                        del hash_block[h]
                        evicted += 1
                        if on_evict is not None:
                            on_evict(h, block)
                self.num_evictions += evicted
        for block in blocks:
            refs[block] = 1
        return blocks

    def release_many(self, blocks) -> list[int]:
        """Drop one reference to each block, in order; returns the blocks that became free (as many decref calls)."""
        refs, freed = self.ref_counts, []
        for block in blocks:
            left = refs[block] - 1
            assert left >= 0, f"decref of free block {block}"
            refs[block] = left
            if not left:
                freed.append(block)
        if freed:
            if self.retain_cached:
                self._free.update(dict.fromkeys(freed))
            else:
                if self.block_hash:
                    for block in freed:
                        self.unregister(block)
                self._free.extend(freed)
        return freed

    def release_exclusive(self, blocks: list[int]) -> None:
        """Free `blocks`, in order, each held by exactly one reference and not indexed (a sequence that never
        shared, in a pool without a cache): release_many without its per-block checks."""
        # Deliberate copy of release_many for speed;
        # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
        refs = self.ref_counts
        for block in blocks:
            refs[block] = 0
        if self.retain_cached:
            self._free.update(dict.fromkeys(blocks))
        else:
            self._free.extend(blocks)

    def incref(self, block: int) -> None:
        """Another reference; a cached free block leaves the free queue (a cache hit)."""
        if self.ref_counts[block] == 0:
            assert self.retain_cached, f"reference to free block {block} without a prefix cache"
            del self._free[block]
        self.ref_counts[block] += 1

    def decref(self, block: int) -> bool:
        """Drop one reference; returns True when the block became free."""
        assert self.ref_counts[block] > 0, f"decref of free block {block}"
        self.ref_counts[block] -= 1
        if self.ref_counts[block]:
            return False
        if self.retain_cached:
            self._free[block] = None
        else:
            if self.block_hash:
                self.unregister(block)
            self._free.append(block)
        return True

    def register(self, block: int, h: Hashable) -> None:
        """Index a full block by its content hash, unless that content is already indexed."""
        if h not in self.hash_block and block not in self.block_hash:
            self.hash_block[h] = block
            self.block_hash[block] = h

    def unregister(self, block: int) -> None:
        h = self.block_hash.pop(block, None)
        if h is not None:
            del self.hash_block[h]

    def drop_cache(self) -> None:
        """Forget every cached (free) block's content."""
        for block in self.cached_free_blocks():
            self.unregister(block)

    def free_before_cached(self, limit: int) -> int:
        """How many blocks the next allocations take before the first that evicts cached content: the free blocks
        at the front of the free queue that hold none, counted up to `limit`."""
        block_hash, count = self.block_hash, 0
        for block in self._free:
            if count >= limit or block in block_hash:
                break
            count += 1
        return count
