"""Address-space policies for contiguous reservations: where extents go in one linear space of token slots.

`BuddySpace` is a binary buddy allocator (what the vLLM paper's Orca baselines used): sizes are rounded up to a power
of two and a freed block merges with its buddy. A capacity that is not a power of two is split into aligned
power-of-two regions (largest first), as an OS splits memory into zones. `FirstFitSpace` keeps a sorted list of free
extents, places a reservation at the lowest address that fits it exactly, and coalesces neighbours on free.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod


class AddressSpace(ABC):
    """Free/allocated bookkeeping over [0, capacity) token slots."""

    def __init__(self, capacity: int):
        self.capacity = capacity

    @abstractmethod
    def placed_size(self, size: int) -> int:
        """Slots actually held by a reservation of `size` slots (after the policy's rounding)."""

    @abstractmethod
    def can_alloc(self, size: int) -> bool: ...

    @abstractmethod
    def alloc(self, size: int) -> int:
        """Start address of a new extent of placed_size(size) slots; the caller checks can_alloc first."""

    @abstractmethod
    def release(self, start: int) -> None: ...

    @abstractmethod
    def largest_placeable(self) -> int:
        """The largest size that could ever be placed (in an empty space)."""

    @abstractmethod
    def unusable_free(self, size: int) -> int:
        """Free slots lying in extents too small for a reservation of `size` slots."""

    @abstractmethod
    def num_free(self) -> int: ...

    @abstractmethod
    def free_extents(self) -> list[tuple[int, int]]:
        """(start, length) of every free extent, sorted by start."""

    @abstractmethod
    def check(self) -> None: ...


class BuddySpace(AddressSpace):
    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._regions: list[tuple[int, int]] = []  # (start, order), largest first; each aligned to its size
        self._free: dict[int, set[int]] = {}  # order -> starts of free blocks
        self._allocated: dict[int, int] = {}  # start -> order
        start = 0
        for order in range(capacity.bit_length() - 1, -1, -1):
            if capacity >> order & 1:
                self._regions.append((start, order))
                self._free.setdefault(order, set()).add(start)
                start += 1 << order
        self._region_starts = [s for s, _ in self._regions]
        self._num_free = capacity

    @staticmethod
    def order_of(size: int) -> int:
        return max(0, (size - 1).bit_length())

    def placed_size(self, size: int) -> int:
        return 1 << self.order_of(size)

    def _region_order(self, start: int) -> int:
        return self._regions[bisect.bisect_right(self._region_starts, start) - 1][1]

    def can_alloc(self, size: int) -> bool:
        order = self.order_of(size)
        return any(blocks for o, blocks in self._free.items() if o >= order)

    def alloc(self, size: int) -> int:
        order = self.order_of(size)
        candidates = [o for o, blocks in self._free.items() if o >= order and blocks]
        if not candidates:
            raise MemoryError(f"no free buddy block of order {order}")
        o = min(candidates)
        start = min(self._free[o])  # lowest address: deterministic addresses
        self._free[o].discard(start)
        while o > order:  # split, keeping the lower half and freeing the upper buddy
            o -= 1
            self._free.setdefault(o, set()).add(start + (1 << o))
        self._allocated[start] = order
        self._num_free -= 1 << order
        return start

    def release(self, start: int) -> None:
        order = self._allocated.pop(start)
        self._num_free += 1 << order
        top = self._region_order(start)
        while order < top:
            buddy = start ^ (1 << order)
            free_here = self._free.get(order)
            if not free_here or buddy not in free_here:
                break
            free_here.discard(buddy)
            start = min(start, buddy)
            order += 1
        self._free.setdefault(order, set()).add(start)

    def largest_placeable(self) -> int:
        return 1 << self._regions[0][1] if self._regions else 0

    def unusable_free(self, size: int) -> int:
        order = self.order_of(size)
        return sum(len(blocks) << o for o, blocks in self._free.items() if o < order)

    def num_free(self) -> int:
        return self._num_free

    def free_extents(self) -> list[tuple[int, int]]:
        return sorted((s, 1 << o) for o, blocks in self._free.items() for s in blocks)

    def allocated_extents(self) -> list[tuple[int, int]]:
        return sorted((s, 1 << o) for s, o in self._allocated.items())

    def check(self) -> None:
        pieces = sorted(self.free_extents() + self.allocated_extents())
        pos = 0
        for start, length in pieces:  # free and allocated blocks tile the space exactly
            assert start == pos, f"buddy blocks overlap or leave a gap at {pos} (next block at {start})"
            assert start % length == 0, f"buddy block at {start} of {length} slots is not aligned"
            pos += length
        assert pos == self.capacity, f"buddy blocks cover {pos} of {self.capacity} slots"
        assert self._num_free == sum(n for _, n in self.free_extents()), "free-slot counter is wrong"
        for order, blocks in self._free.items():
            for start in blocks:
                if order < self._region_order(start):
                    assert start ^ (1 << order) not in blocks, f"free buddies at {start} (order {order}) unmerged"


class FirstFitSpace(AddressSpace):
    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._starts: list[int] = [0]  # free extents, sorted by start, never adjacent
        self._lengths: list[int] = [capacity]
        self._allocated: dict[int, int] = {}  # start -> length
        self._num_free = capacity

    def placed_size(self, size: int) -> int:
        return size

    def can_alloc(self, size: int) -> bool:
        return any(n >= size for n in self._lengths)

    def alloc(self, size: int) -> int:
        for i, n in enumerate(self._lengths):
            if n >= size:
                start = self._starts[i]
                if n == size:
                    del self._starts[i], self._lengths[i]
                else:
                    self._starts[i] += size
                    self._lengths[i] -= size
                self._allocated[start] = size
                self._num_free -= size
                return start
        raise MemoryError(f"no free extent of {size} slots")

    def release(self, start: int) -> None:
        length = self._allocated.pop(start)
        self._num_free += length
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and start + length == self._starts[i]:  # merge with the next extent
            length += self._lengths[i]
            del self._starts[i], self._lengths[i]
        if i > 0 and self._starts[i - 1] + self._lengths[i - 1] == start:  # merge with the previous extent
            self._lengths[i - 1] += length
        else:
            self._starts.insert(i, start)
            self._lengths.insert(i, length)

    def largest_placeable(self) -> int:
        return self.capacity

    def unusable_free(self, size: int) -> int:
        return sum(n for n in self._lengths if n < size)

    def num_free(self) -> int:
        return self._num_free

    def free_extents(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._lengths))

    def allocated_extents(self) -> list[tuple[int, int]]:
        return sorted(self._allocated.items())

    def check(self) -> None:
        pieces = sorted(self.free_extents() + self.allocated_extents())
        pos = 0
        for start, length in pieces:
            assert length > 0, f"empty extent at {start}"
            assert start == pos, f"extents overlap or leave a gap at {pos} (next extent at {start})"
            pos += length
        assert pos == self.capacity, f"extents cover {pos} of {self.capacity} slots"
        for (s1, n1), (s2, _) in zip(self.free_extents(), self.free_extents()[1:]):
            assert s1 + n1 < s2, f"adjacent free extents at {s1} and {s2} were not coalesced"
        assert self._num_free == sum(self._lengths), "free-slot counter is wrong"


ADDRESS_SPACES = {"buddy": BuddySpace, "first-fit": FirstFitSpace}
