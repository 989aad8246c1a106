"""Paged KV cache (PagedAttention): fixed-size blocks taken on demand, one block table per sequence.

Blocks come from a `BlockPool` (a free queue and reference counts). A sequence's block table maps its logical
blocks (tokens [i*block_size, (i+1)*block_size)) to physical block ids; blocks are taken when a token crosses a block
boundary and returned when the sequence finishes or is preempted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sim.allocators.base import AllocationError, TokenContent, BlockTablePlacement, KVAllocator, MemoryBreakdown
from sim.config import ceil_div


class BlockPool:
    """Physical blocks: a FIFO free queue and a reference count per block (0 = free)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self.ref_counts = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise AllocationError("no free KV block")
        block = self._free.popleft()
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"incref of free block {block}"
        self.ref_counts[block] += 1

    def decref(self, block: int) -> bool:
        """Drop one reference; returns True when the block became free."""
        assert self.ref_counts[block] > 0, f"decref of free block {block}"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free.append(block)
            return True
        return False

    def free_block_ids(self) -> list[int]:
        return list(self._free)


@dataclass
class _Seq:
    block_table: list[int] = field(default_factory=list)
    tokens: int = 0
    final_len: int = 0


class PagedAllocator(KVAllocator):
    name = "paged"
    description = "fixed-size blocks on demand through a per-sequence block table (PagedAttention)"
    grows_on_demand = True

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int):
        super().__init__(num_blocks, block_size, max_model_len)
        self.pool = BlockPool(num_blocks)
        self._seqs: dict[int, _Seq] = {}
        self._tokens = 0  # token_states
        self._unfilled = 0  # sum over sequences of min(empty slots in own blocks, final_len - tokens)

    def _reserved_of(self, s: _Seq) -> int:
        return max(0, min(len(s.block_table) * self.block_size - s.tokens, s.final_len - s.tokens))

    def never_fits(self, final_len: int) -> str | None:
        need = ceil_div(final_len, self.block_size)
        if need > self.num_blocks:
            return f"needs {need:,} blocks; the KV cache has {self.num_blocks:,}"
        return None

    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        return (seq_id not in self._seqs and num_tokens >= 0
                and ceil_div(num_tokens, self.block_size) <= self.pool.num_free_blocks)

    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        if not self.can_admit(seq_id, num_tokens, final_len):
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens)")
        s = _Seq([self.pool.allocate() for _ in range(ceil_div(num_tokens, self.block_size))], num_tokens, final_len)
        self._seqs[seq_id] = s
        self._tokens += num_tokens
        self._unfilled += self._reserved_of(s)
        return 0

    def blocks_needed_to_append(self, seq_id: int, num_tokens: int = 1) -> int:
        s = self._seqs[seq_id]
        return max(0, ceil_div(s.tokens + num_tokens, self.block_size) - len(s.block_table))

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        return (seq_id in self._seqs and num_tokens >= 0
                and self.blocks_needed_to_append(seq_id, num_tokens) <= self.pool.num_free_blocks)

    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        if not self.can_append(seq_id, num_tokens):
            raise AllocationError(f"no free block for sequence {seq_id} to grow by {num_tokens}")
        s = self._seqs[seq_id]
        before = self._reserved_of(s)
        for _ in range(self.blocks_needed_to_append(seq_id, num_tokens)):
            s.block_table.append(self.pool.allocate())
        s.tokens += num_tokens
        self._tokens += num_tokens
        self._unfilled += self._reserved_of(s) - before

    def free(self, seq_id: int) -> None:
        s = self._seqs.pop(seq_id, None)
        if s is None:
            raise AllocationError(f"sequence {seq_id} is not live")
        # Reverse order, as vLLM: the tail is the least likely to be reused.
        for block in reversed(s.block_table):
            self.pool.decref(block)
        self._tokens -= s.tokens
        self._unfilled -= self._reserved_of(s)

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].tokens

    def placement(self, seq_id: int) -> BlockTablePlacement:
        return BlockTablePlacement(self.block_size, tuple(self._seqs[seq_id].block_table))

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def memory(self, next_final_len: int | None = None) -> MemoryBreakdown:
        held = (self.num_blocks - self.pool.num_free_blocks) * self.block_size
        return MemoryBreakdown(
            token_states=self._tokens,
            reserved=self._unfilled,
            internal_fragmentation=held - self._tokens - self._unfilled,
            external_fragmentation=0,
            free=self.pool.num_free_blocks * self.block_size,
        )

    def check(self) -> None:
        refs = [0] * self.num_blocks
        for seq_id, s in self._seqs.items():
            assert len(s.block_table) == ceil_div(s.tokens, self.block_size), (
                f"sequence {seq_id} holds {s.tokens} tokens in {len(s.block_table)} blocks")
            for block in s.block_table:
                refs[block] += 1
        assert refs == self.pool.ref_counts, "reference counts differ from block-table entries"
        free = self.pool.free_block_ids()
        assert len(set(free)) == len(free), "a block is twice in the free queue"
        assert sorted(free) == [b for b, r in enumerate(refs) if r == 0], "free queue differs from unreferenced blocks"
        assert self._tokens == sum(s.tokens for s in self._seqs.values()), "token counter is wrong"
        assert self._unfilled == sum(self._reserved_of(s) for s in self._seqs.values()), "reserved counter is wrong"
