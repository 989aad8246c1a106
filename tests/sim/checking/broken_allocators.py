"""A small, correct user-written allocator (ToyPaged) and deliberately broken variants of it, for `sim check`.

They use only the public interface of sim.allocators.base, as a researcher's own allocator would.
"""

from __future__ import annotations

from sim.allocators.base import AllocationError, BlockTablePlacement, KVAllocator, MemoryBreakdown


class ToyPaged(KVAllocator):
    """Paged, no sharing: a LIFO free list and one block table per sequence."""

    name = "toy-paged"
    grows_on_demand = True

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int):
        super().__init__(num_blocks, block_size, max_model_len)
        self.free_list = list(range(num_blocks - 1, -1, -1))
        self._seqs: dict[int, tuple[list[int], list[int]]] = {}  # seq -> (block table, [tokens, final_len])

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def never_fits(self, final_len: int, prompt_len: int | None = None) -> str | None:
        return "too long" if self.blocks_for(final_len) > self.num_blocks else None

    def can_admit(self, seq_id, num_tokens, final_len, content=None) -> bool:
        return seq_id not in self._seqs and num_tokens >= 0 and self.blocks_for(num_tokens) <= len(self.free_list)

    def admit(self, seq_id, num_tokens, final_len, content=None) -> int:
        if not self.can_admit(seq_id, num_tokens, final_len):
            raise AllocationError("no room")
        self._seqs[seq_id] = (
            [self.free_list.pop() for _ in range(self.blocks_for(num_tokens))],
            [num_tokens, final_len],
        )
        return 0

    def can_append(self, seq_id, num_tokens=1) -> bool:
        if seq_id not in self._seqs or num_tokens < 0:
            return False
        table, (tokens, _) = self._seqs[seq_id]
        return self.blocks_for(tokens + num_tokens) - len(table) <= len(self.free_list)

    def append(self, seq_id, num_tokens=1) -> None:
        if not self.can_append(seq_id, num_tokens):
            raise AllocationError("no room")
        table, state = self._seqs[seq_id]
        state[0] += num_tokens
        while len(table) < self.blocks_for(state[0]):
            table.append(self.free_list.pop())

    def free(self, seq_id) -> None:
        if seq_id not in self._seqs:
            raise AllocationError("not live")
        table, _ = self._seqs.pop(seq_id)
        self.free_list.extend(reversed(table))

    def num_tokens(self, seq_id) -> int:
        return self._seqs[seq_id][1][0]

    def placement(self, seq_id) -> BlockTablePlacement:
        return BlockTablePlacement(self.block_size, tuple(self._seqs[seq_id][0]))

    def memory(self, next_final_len=None, next_prompt_len=None) -> MemoryBreakdown:
        tokens = sum(t for _, (t, _) in self._seqs.values())
        held = sum(len(table) for table, _ in self._seqs.values()) * self.block_size
        reserved = sum(max(0, min(len(table) * self.block_size, f) - t) for table, (t, f) in self._seqs.values())
        free = len(self.free_list) * self.block_size
        return MemoryBreakdown(tokens, reserved, held - tokens - reserved, 0, free)

    def check(self) -> None:
        assert len(set(self.free_list)) == len(self.free_list)


class LeakyToy(ToyPaged):
    """free() forgets the sequence's last block (a missed reference drop)."""

    def free(self, seq_id) -> None:
        if seq_id not in self._seqs:
            raise AllocationError("not live")
        table, _ = self._seqs.pop(seq_id)
        self.free_list.extend(reversed(table[:-1]))


class PartialBlockToy(ToyPaged):
    """Forgets the partly filled last block: blocks needed = tokens // block_size."""

    def blocks_for(self, tokens: int) -> int:
        return tokens // self.block_size


class WrongBlockFreeToy(ToyPaged):
    """free() returns the neighbours of the sequence's blocks: the counts stay right, but a block still in use is
    handed out again while the freed one is lost."""

    def free(self, seq_id) -> None:
        if seq_id not in self._seqs:
            raise AllocationError("not live")
        table, _ = self._seqs.pop(seq_id)
        self.free_list.extend((b + 1) % self.num_blocks for b in reversed(table))

    def check(self) -> None:  # its own check would catch a duplicate in the free list; let the invariants speak
        pass


class OptimisticToy(ToyPaged):
    """can_append always says yes."""

    def can_append(self, seq_id, num_tokens=1) -> bool:
        return seq_id in self._seqs
