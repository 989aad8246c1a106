"""Swap preemption for the paged allocators: a request's sequences leave the GPU for the host tier and come back with
their block tables, sharing included (vLLM v0's swap; see sim.allocators.host_tier).

`PagedAllocator` inherits `SwapMixin`; the methods reach the allocator's bookkeeping (`_seqs`, `_attach`, the
counters of held blocks and tokens) the way its own admit and free do, so that `PagedAllocator.check` holds after
every swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.allocators.base import AllocationError


@dataclass(eq=False)
class SwappedRequest:
    """The sequences of one swapped-out request. `handle` names their blocks on the host; `fills` is the tokens in
    each of those blocks (in handle order); each sequence keeps its record, with its block table rewritten as indices
    into those blocks."""

    handle: int
    seq_ids: list[int]
    tokens: list[int]  # each sequence's tokens
    records: list = field(default_factory=list)  # the allocator's per-sequence records (_Seq), detached
    fills: list[int] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.fills)


class SwapMixin:
    """swap_out / can_swap_in / swap_in for PagedAllocator (module docstring)."""

    def _unique_blocks(self, seq_ids: list[int]) -> list[int]:
        seen: dict[int, None] = {}
        for seq_id in seq_ids:
            for block in self._seqs[seq_id].block_table:
                seen[block] = None
        return list(seen)

    def can_swap_out(self, seq_ids: list[int]) -> bool:
        """Whether the host tier can take these live sequences' blocks (each shared block once)."""
        if self.host is None or not seq_ids or any(i not in self._seqs for i in seq_ids):
            return False
        return self.host.can_swap_out(len(self._unique_blocks(seq_ids)))

    def swap_out(self, seq_ids: list[int]) -> SwappedRequest:
        """Copy these sequences' blocks to the host and free them on the GPU (as `free` does); returns what
        `swap_in` needs to bring them back."""
        if not self.can_swap_out(seq_ids):
            raise AllocationError(f"cannot swap out sequences {seq_ids}")
        blocks = self._unique_blocks(seq_ids)
        position = {block: i for i, block in enumerate(blocks)}
        fill, r = self.fill, self._round
        tokens = []
        for seq_id in seq_ids:
            s = self._seqs[seq_id]
            n = s.base + r
            tokens.append(n)
            if s.block_table:
                fill[s.block_table[-1]] = self._tail_fill(s, n)
            if s.indexed:
                self._sync_runs(s, n)
        fills = [fill[block] for block in blocks]
        handle = self.host.swap_out(blocks)
        records = []
        for seq_id in seq_ids:
            s = self._seqs[seq_id]
            table = [position[block] for block in s.block_table]
            self.free(seq_id)
            s.block_table = table
            records.append(s)
        return SwappedRequest(handle, list(seq_ids), tokens, records, fills)

    def swap_in_need(self, swapped: SwappedRequest) -> int:
        """Free GPU blocks `swap_in` takes, plus those one more token of every sequence then needs (a new block at a
        block boundary, a copy of a shared partly filled last block for every writer but the last)."""
        bs = self.block_size
        writers: dict[int, int] = {}
        more = 0
        for n, s in zip(swapped.tokens, swapped.records):
            if n % bs == 0:
                more += 1
            else:
                last = s.block_table[-1]
                writers[last] = writers.get(last, 0) + 1
        more += sum(count - 1 for count in writers.values())
        return swapped.num_blocks + more

    def can_swap_in(self, swapped: SwappedRequest) -> bool:
        """Whether `swap_in` would succeed now (and every sequence could then take one more token)."""
        return all(i not in self._seqs for i in swapped.seq_ids) and (
            self.swap_in_need(swapped) <= self.pool.num_free_blocks
        )

    def swap_in(self, swapped: SwappedRequest) -> None:
        """Copy the request's blocks back into fresh GPU blocks and restore its sequences (at the end of live
        order, as a new admission), their sharing and their index entries."""
        if not self.can_swap_in(swapped):
            raise AllocationError(f"cannot swap in sequences {swapped.seq_ids}")
        pool, fill = self.pool, self.fill
        blocks = pool.allocate_many(swapped.num_blocks)
        for block, f in zip(blocks, swapped.fills):
            fill[block] = f
        self.host.swap_in(swapped.handle, blocks)
        # recompute would have prefilled the longest sequence again (a lower bound for several branches)
        self.host.note_spared(0, max(swapped.tokens), len(blocks))
        self._held_blocks += len(blocks)
        self._tokens += sum(swapped.fills)
        referenced = [False] * len(blocks)
        for seq_id, n, s in zip(swapped.seq_ids, swapped.tokens, swapped.records):
            table = []
            for i in s.block_table:
                if referenced[i]:
                    pool.incref(blocks[i])
                referenced[i] = True
                table.append(blocks[i])
            s.block_table = table
            s.order = self._next_order
            self._next_order += 1
            self._seqs[seq_id] = s
            if s.forked:
                self._forked[seq_id] = s
            self._num_indexed += s.indexed
            self._logical_blocks += len(table)
            self._seq_tokens += n
            self._attach(seq_id, s, n)
            for i, h in enumerate(s.hashes):
                pool.register(table[i], h)

    def discard_swapped(self, swapped: SwappedRequest, pending: list | None = None) -> list | None:
        """Forget a swapped request's host blocks (it was rejected); `pending` as HostTier.discard."""
        return self.host.discard(swapped.handle, pending)
