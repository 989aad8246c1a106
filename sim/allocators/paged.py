"""Paged KV cache (PagedAttention): fixed-size blocks taken on demand, one block table per sequence, and sharing.

Long file: the hot loops (round steps and their deliberate copies) stay in one class with their locals.

Blocks come from a `BlockPool` (a free queue, reference counts, and a content-hash index). A sequence's block table
maps its logical blocks (tokens [i*block_size, (i+1)*block_size)) to physical block ids; blocks are taken when a token
crosses a block boundary and returned when the sequence finishes or is preempted.

Sharing (on unless `sharing=False`, the `--no-sharing` counterfactual):
- fork: a child sequence points at every block of its parent (reference counts go up). The first write into a
  shared, partly filled block gives the writer a private copy (copy-on-write), recorded as a (source, destination)
  block copy for the executor (`take_copy_ops`).
- shared prefixes: every full block is keyed by a hash chained over its tokens' identities (`TokenContent`); a new
  sequence whose leading full blocks match blocks held by live sequences maps them instead of computing them again.
- `paged-prefix-cache` also keeps full blocks of finished sequences in the index at reference count 0: they sit in
  the free queue and are evicted least-recently-used first when a block is needed, or reused on a hit.

Why this file is long (~800 lines): PagedAllocator keeps the contract methods, the lazy-round bookkeeping and the round
steps (`_advance_rounds`, `_recorded_plain_rounds`, the inlined `_cross`) in one class, because the round steps are
the replay's hot loop: they cache the allocator's state in locals and inline the per-block steps, and each deliberate
copy sits next to the code it copies so that a change to one is seen in the other. The block pool
(`sim.allocators.block_pool`) and the block keys (`sim.allocators.prefix_hash`) live apart.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from sim.allocators.base import AllocationError, BlockTablePlacement, KVAllocator, MemoryBreakdown, TokenContent
from sim.allocators.block_pool import BlockPool
from sim.allocators.fast_paths import BlockDecodePlan, DecodePlan
from sim.allocators.host_tier import HostTier
from sim.allocators.paged_swap import SwapMixin
from sim.allocators.prefix_hash import Run, chain_key, content_length, leading_hits, leading_hits_two_tiers, runs_from
from sim.units import ceil_div


@dataclass(eq=False)
class _Seq:
    """A live sequence. It holds `base + round` tokens, where round is its allocator's count of decode rounds (see
    PagedAllocator: lazy rounds)."""

    seq_id: int
    block_table: list[int]
    base: int
    final_len: int
    order: int  # live order: sequences admitted or forked earlier are appended to first in a round
    runs: list[Run] = field(default_factory=list)  # (tag, first offset, length) over [0, run_end)
    run_end: int = 0  # tokens the runs cover; the sequence's own tokens after it are implied (see _sync_runs)
    hashes: list[Hashable] = field(default_factory=list)  # chained hash of each full block, in order
    indexed: bool = False  # its full blocks go into the hash index (only where another sequence could match them)
    forked: bool = False  # it took part in a fork, so it may share a partly filled last block


class PagedAllocator(SwapMixin, KVAllocator):
    """Paged KV cache; see the module docstring.

    Lazy rounds: a decode round appends one token to every live sequence (`append_round`). Instead of touching every
    sequence, the allocator counts rounds and keeps each sequence's token count as an offset from that count
    (`_Seq.base`), so that a round costs only what changes in it: the sequences that cross a block boundary (found in
    a ring of block_size buckets keyed by -base mod block_size, each in live order) and, with the prefix cache, the
    blocks that become full. The reserved slots of sequences that never forked are a running sum that falls by one per
    round for each sequence still reserving, with a count of the rounds at which each stops (`_res_zero`). A live
    sequence's last block therefore has a stale `fill`; `_tail_fill` gives it, and it is written back whenever the
    block stops being a last block or something reads it.
    """

    name = "paged"
    description = "fixed-size blocks on demand through a per-sequence block table, with copy-on-write sharing"
    grows_on_demand = True
    supports_fork = True
    retain_cached = False

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int, sharing: bool = True):
        super().__init__(num_blocks, block_size, max_model_len)
        self.sharing = sharing
        self.pool = BlockPool(num_blocks, retain_cached=self.retain_cached and sharing)
        self.fill = [0] * num_blocks  # tokens written in each physical block (stale for last blocks: _tail_fill)
        self._seqs: dict[int, _Seq] = {}  # in live order
        self._round = 0  # decode rounds so far
        self._ring: list[dict[int, _Seq]] = [{} for _ in range(block_size)]  # by (-base) % block_size
        self._ring_unordered = [False] * block_size  # a bucket whose insertion order is not live order
        self._next_order = 0
        self._forked: dict[int, _Seq] = {}
        self._num_indexed = 0
        self._held_blocks = 0  # blocks with reference count > 0
        self._tokens = 0  # sum of fill over held blocks: token_states
        self._seq_tokens = 0  # sum of the live sequences' token counts
        self._logical_blocks = 0  # sum of block-table lengths: what the live sequences would hold unshared
        self._res_sum = 0  # reserved slots of the live sequences that never forked
        self._res_pos = 0  # how many of them reserve at least one slot
        self._res_zero: dict[int, int] = {}  # round -> how many of them stop reserving at that round
        self._copies: list[tuple[int, int]] = []
        self.num_cow_copies = 0
        self.hit_tokens = 0
        self.host: HostTier | None = None  # a second tier (attach_host)

    # --- token identities and block keys (sim.allocators.prefix_hash) ----------------------------------------------
    def _prefix_hits(self, seq_id: int, num_tokens: int, content: TokenContent | None) -> list[int]:
        """Blocks already holding this sequence's leading full blocks (at least one token is left to compute)."""
        if not self.sharing or not (self.pool.retain_cached or (content and content.runs)):
            return []  # a sequence's own tokens are indexed only in a cache (see admit: indexed)
        return leading_hits(self.pool.hash_block, runs_from(content, seq_id, num_tokens), num_tokens, self.block_size)

    def _hits(self, seq_id: int, num_tokens: int, content: TokenContent | None) -> tuple[list[int], list]:
        """(GPU blocks, host tier keys) holding this sequence's leading full blocks: `_prefix_hits`, then, with an
        offloaded prefix cache, the blocks after them the host holds (sim.allocators.host_tier)."""
        host = self.host
        if host is None or not host.num_cached or not self.pool.retain_cached or not self.sharing:
            return self._prefix_hits(seq_id, num_tokens, content), []
        runs = runs_from(content, seq_id, num_tokens)
        return leading_hits_two_tiers(self.pool.hash_block, host.has_cached, runs, num_tokens, self.block_size)

    def prefix_hit_tokens(self, seq_id: int, num_tokens: int, content: TokenContent | None = None) -> int:
        hits, host_keys = self._hits(seq_id, num_tokens, content)
        return (len(hits) + len(host_keys)) * self.block_size

    def _sync_runs(self, s: _Seq, tokens: int) -> None:
        """Extend s's runs to its `tokens` tokens: tokens it wrote itself are its own (tag ("seq", id))."""
        n = tokens - s.run_end
        if n <= 0:
            return
        tag = ("seq", s.seq_id)
        if s.runs and s.runs[-1][0] == tag:
            t, first, length = s.runs[-1]
            s.runs[-1] = (t, first, length + n)
        else:
            s.runs.append((tag, s.run_end, n))
        s.run_end = tokens

    def _register_full_blocks(self, s: _Seq, tokens: int) -> None:
        full = tokens // self.block_size
        if len(s.hashes) >= full:
            return
        self._sync_runs(s, tokens)
        hash_block, block_hash = self.pool.hash_block, self.pool.block_hash
        bs, fill, table, hashes = self.block_size, self.fill, s.block_table, s.hashes
        tag, first, length = s.runs[0]
        if first == 0 and length >= (len(hashes) + 1) * bs:
            # The blocks whose tokens all lie in the first run: keys (tag, index), as chain_key gives them, in one loop.
            # Deliberate copy of chain_key and BlockPool.register for speed;
            # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
            for index in range(len(hashes), min(full, length // bs)):
                h = (tag, index)
                hashes.append(h)
                block = table[index]
                fill[block] = bs  # it may have been a last block, whose fill is stale
                if h not in hash_block and block not in block_hash:
                    hash_block[h] = block
                    block_hash[block] = h
        while len(s.hashes) < full:
            index = len(s.hashes)
            h = chain_key(s.hashes[-1] if s.hashes else None, s.runs, index, self.block_size)
            s.hashes.append(h)
            block = s.block_table[index]
            self.fill[block] = self.block_size  # it may have been a last block, whose fill is stale
            # Deliberate copy of BlockPool.register for speed;
            # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
            if h not in hash_block and block not in block_hash:
                hash_block[h] = block
                block_hash[block] = h

    # --- lazy-round bookkeeping -----------------------------------------------------------------------------------
    def _tail_fill(self, s: _Seq, tokens: int) -> int:
        """Tokens in s's last block when s holds `tokens` tokens (s must hold at least one block)."""
        return tokens - (len(s.block_table) - 1) * self.block_size

    def _reserving(self, s: _Seq, tokens: int) -> int:
        """Empty slots of s's (private) last block that s will still fill before it finishes."""
        partial = tokens % self.block_size
        if partial and s.final_len > tokens:
            return min(self.block_size - partial, s.final_len - tokens)
        return 0

    def _res_add(self, s: _Seq, tokens: int) -> None:
        c = self._reserving(s, tokens)
        if c:
            self._res_sum += c
            self._res_pos += 1
            z = self._round + c  # its reservation falls by one per round and reaches 0 at round z
            self._res_zero[z] = self._res_zero.get(z, 0) + 1

    def _res_remove(self, s: _Seq, tokens: int) -> None:
        c = self._reserving(s, tokens)
        if c:
            self._res_sum -= c
            self._res_pos -= 1
            z = self._round + c
            left = self._res_zero[z] - 1
            if left:
                self._res_zero[z] = left
            else:
                del self._res_zero[z]

    def _ring_add(self, seq_id: int, s: _Seq) -> None:
        k = (-s.base) % self.block_size
        bucket = self._ring[k]
        if bucket and not self._ring_unordered[k] and next(reversed(bucket.values())).order > s.order:
            self._ring_unordered[k] = True
        bucket[seq_id] = s

    def _ring_bucket(self, k: int) -> dict[int, _Seq]:
        """Bucket k of the ring, in live order."""
        bucket = self._ring[k]
        if self._ring_unordered[k]:
            bucket = dict(sorted(bucket.items(), key=lambda item: item[1].order))
            self._ring[k] = bucket
            self._ring_unordered[k] = False
        return bucket

    def _detach(self, seq_id: int, s: _Seq, tokens: int) -> None:
        """Take s out of the lazy-round bookkeeping before its token count changes other than by a round."""
        del self._ring[(-s.base) % self.block_size][seq_id]
        if not s.forked:
            self._res_remove(s, tokens)

    def _attach(self, seq_id: int, s: _Seq, tokens: int) -> None:
        s.base = tokens - self._round
        self._ring_add(seq_id, s)
        if not s.forked:
            self._res_add(s, tokens)

    def _mark_forked(self, seq_id: int, s: _Seq, tokens: int) -> None:
        if not s.forked:
            self._res_remove(s, tokens)
            s.forked = True
            self._forked[seq_id] = s

    # --- block movement -------------------------------------------------------------------------------------------
    def _take_block(self) -> int:
        block = self.pool.allocate()
        self.fill[block] = 0
        self._held_blocks += 1
        return block

    def _ref(self, block: int) -> None:
        if self.pool.ref_counts[block] == 0:
            self._held_blocks += 1
            self._tokens += self.fill[block]
        self.pool.incref(block)

    def _unref(self, block: int) -> None:
        if self.pool.decref(block):
            self._held_blocks -= 1
            self._tokens -= self.fill[block]
            if block not in self.pool.block_hash:
                self.fill[block] = 0

    # --- the interface --------------------------------------------------------------------------------------------
    def never_fits(self, final_len: int, prompt_len: int | None = None) -> str | None:
        need = ceil_div(final_len, self.block_size)
        if need > self.num_blocks:
            return f"needs {need:,} blocks; the KV cache has {self.num_blocks:,}"
        return None

    def _admit_need(self, seq_id: int, num_tokens: int, content: TokenContent | None) -> tuple[list[int], list, int]:
        """(GPU hit blocks, host hit keys, free blocks needed): host hits are loaded into fresh blocks."""
        hits, host_keys = self._hits(seq_id, num_tokens, content)
        if not hits:
            return hits, host_keys, ceil_div(num_tokens, self.block_size)
        from_free = sum(1 for b in hits if self.pool.ref_counts[b] == 0)
        return hits, host_keys, ceil_div(num_tokens, self.block_size) - len(hits) + from_free

    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        if seq_id in self._seqs or num_tokens < 0:
            return False
        _, _, need = self._admit_need(seq_id, num_tokens, content)
        return need <= self.pool.num_free_blocks

    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        if seq_id in self._seqs or num_tokens < 0:
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens)")
        hits, host_keys, need = self._admit_need(seq_id, num_tokens, content)  # can_admit, without the hits twice
        if need > self.pool.num_free_blocks:
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens): {need} blocks needed")
        for block in hits:
            self._ref(block)
        table = list(hits)
        bs, fill = self.block_size, self.fill
        new = ceil_div(num_tokens, bs) - len(hits)
        if new:
            # host hits leave the host before the GPU blocks are taken: evictions those cause cannot drop them
            claimed = [self.host.claim(key) for key in host_keys] if host_keys else []
            blocks = self.pool.allocate_many(new)
            for block in blocks:
                fill[block] = bs
            for host_block, block in zip(claimed, blocks):
                self.host.load(host_block, block)
            if claimed:
                self.host.note_spared(len(hits) * bs, len(claimed) * bs, len(claimed))
            table += blocks
        if new:
            fill[table[-1]] = num_tokens - (len(table) - 1) * bs
        self._held_blocks += new
        self._tokens += num_tokens - len(hits) * bs
        # A sequence's own tokens can match only its own later recompute, through a cache; shared content matters
        # whenever sharing is on.
        indexed = self.sharing and (self.pool.retain_cached or bool(content and content.runs))
        s = _Seq(seq_id, table, 0, final_len, self._next_order, indexed=indexed)
        self._next_order += 1
        if indexed:  # the content's runs all along, so that tokens written by later appends (prompt chunks) match
            covered = max(num_tokens, content_length(content))
            s.runs, s.run_end = runs_from(content, seq_id, covered), covered
            self._num_indexed += 1
        self._seqs[seq_id] = s
        self._logical_blocks += len(table)
        self._seq_tokens += num_tokens
        self._attach(seq_id, s, num_tokens)
        if indexed:
            self._register_full_blocks(s, num_tokens)
        hit = (len(hits) + len(host_keys)) * self.block_size
        self.hit_tokens += hit
        return hit

    def _append_need(self, s: _Seq, num_tokens: int) -> tuple[bool, int]:
        """(copy-on-write needed, blocks needed) to grow s by num_tokens."""
        tokens = s.base + self._round
        cow = num_tokens > 0 and tokens % self.block_size != 0 and self.pool.ref_counts[s.block_table[-1]] > 1
        new = max(0, ceil_div(tokens + num_tokens, self.block_size) - len(s.block_table))
        return cow, new + cow

    def blocks_needed_to_append(self, seq_id: int, num_tokens: int = 1) -> int:
        return self._append_need(self._seqs[seq_id], num_tokens)[1]

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        s = self._seqs.get(seq_id)
        return s is not None and num_tokens >= 0 and self._append_need(s, num_tokens)[1] <= self.pool.num_free_blocks

    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        s = self._seqs.get(seq_id)
        if s is None or num_tokens < 0:
            raise AllocationError(f"sequence {seq_id} is not live")
        cow, need = self._append_need(s, num_tokens)
        if need > self.pool.num_free_blocks:
            raise AllocationError(f"no free block for sequence {seq_id} to grow by {num_tokens}")
        bs = self.block_size
        pos = s.base + self._round
        self._detach(seq_id, s, pos)
        if s.block_table:
            self.fill[s.block_table[-1]] = self._tail_fill(s, pos)
        if cow:  # the last block is shared and partly filled: write into a private copy
            src = s.block_table[-1]
            dst = self._take_block()
            self.fill[dst] = self.fill[src]
            self._tokens += self.fill[dst]
            self._unref(src)
            s.block_table[-1] = dst
            self._copies.append((src, dst))
            self.num_cow_copies += 1
        left = num_tokens
        while left:
            if pos % bs == 0 and pos // bs == len(s.block_table):
                s.block_table.append(self._take_block())
                self._logical_blocks += 1
            block = s.block_table[pos // bs]
            n = min(left, bs - pos % bs)
            self.fill[block] += n
            self._tokens += n
            pos += n
            left -= n
        self._seq_tokens += num_tokens
        self._attach(seq_id, s, pos)
        if s.indexed and pos // bs > len(s.hashes):
            self._register_full_blocks(s, pos)

    def _shared_partial_tail(self) -> bool:
        """Whether some live sequence's last block is shared and partly filled (its next append copies it)."""
        bs, refs, r = self.block_size, self.pool.ref_counts, self._round
        return any((s.base + r) % bs and refs[s.block_table[-1]] > 1 for s in self._forked.values())

    def append_round(self) -> int | None:
        """One token for every live sequence, in live order (the order they were admitted or forked), unless some
        append would copy a block or the free blocks do not suffice: then None, and nothing changes. Returns the
        tokens the live sequences then hold. Costs O(sequences crossing a block boundary)."""
        if self._forked and self._shared_partial_tail():
            return None
        if len(self._ring[self._round % self.block_size]) > self.pool.num_free_blocks:
            return None
        self._advance_round()
        return self._seq_tokens

    def round_crossers(self) -> list[int] | None:
        """Ids of the live sequences that the next round gives a new block, in live order; None while any sequence
        has forked (then a round may also copy blocks)."""
        if self._forked:
            return None
        return list(self._ring_bucket(self._round % self.block_size))

    def _advance_round(self) -> None:
        """The round itself (append_round has checked that it can be carried out)."""
        self._advance_rounds(1)

    def _advance_rounds(self, rounds: int, record: tuple[list[int], list[int]] | None = None) -> int:
        """`rounds` lazy rounds, each as one token appended to every live sequence in live order (the caller has
        checked that the free blocks suffice and that nothing is copied). Per round: the reserving sequences each
        fill a reserved slot, the sequences at a block boundary take a block, and (with indexing) the blocks that
        become full are indexed; within one append a new block is taken before a full one is indexed, since
        allocation may evict a cached block whose content a later registration would then index.

        With `record` (two lists), it stops before the first round the free blocks cannot cover and appends, after
        each round, the reserved slots and the blocks taken so far. Returns the rounds carried out."""
        bs = self.block_size
        ring, unordered, fill, zero = self._ring, self._ring_unordered, self.fill, self._res_zero
        allocate_many = self.pool.allocate_many
        plain_pool = not self.pool.retain_cached
        popleft, refs = (self.pool.front_popper() if plain_pool else None), self.pool.ref_counts
        indexing = self._num_indexed > 0
        res_sum, res_pos = self._res_sum, self._res_pos
        last = bs - 1
        crossed = 0
        r = start = self._round
        free = self.pool.num_free_blocks
        for _ in range(rounds):
            k = r % bs
            crossers = ring[k]
            if record is not None:
                if crossed + len(crossers) > free:
                    break
                if r > start:
                    record[0].append(res_sum)
                    record[1].append(crossed)
            if crossers and unordered[k]:
                crossers = self._ring_bucket(k)
            fillers = None
            if indexing and ring[(r + 1) % bs]:
                fillers = [s for s in self._ring_bucket((r + 1) % bs).values() if s.indexed] or None
                crossers = ring[k]  # (k + 1) % bs may be k itself (one-token blocks): the bucket was re-sorted
            res_sum -= res_pos  # every reserving sequence fills one of its reserved slots
            r += 1
            res_pos -= zero.pop(r, 0)
            if not crossers and not fillers:
                continue
            if fillers and crossers:
                self._round, self._res_sum, self._res_pos = r, res_sum, res_pos  # _cross reads and updates them
                events = sorted(
                    [(s.order, 0, s) for s in crossers.values()] + [(s.order, 1, s) for s in fillers],
                    key=lambda e: (e[0], e[1]),
                )
                for _, kind, s in events:
                    if kind:
                        self._register_full_blocks(s, s.base + r)
                    else:
                        self._cross(s, r)
                res_sum, res_pos = self._res_sum, self._res_pos
                crossed += len(crossers)
                continue
            if fillers:
                for s in fillers:
                    self._register_full_blocks(s, s.base + r)
                continue
            crossed += len(crossers)
            # Deliberate copy of BlockPool.allocate_many and _cross for speed;
            # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
            if plain_pool:  # the front of the free queue, reference count 1
                blocks = [popleft() for _ in crossers]
                for block in blocks:
                    refs[block] = 1
            else:
                blocks = allocate_many(len(crossers))
            full_reservations = 0  # crossers that reserve all `last` empty slots of their new block
            for s, block in zip(crossers.values(), blocks):
                table = s.block_table
                if table:
                    fill[table[-1]] = bs  # no longer a last block: its fill must be exact
                table.append(block)  # a last block: its fill is computed when needed (_tail_fill)
                c = s.final_len - s.base - r  # _res_add, inlined: one token in a fresh block
                if c > 0 and not s.forked:
                    if c >= last:
                        full_reservations += 1
                    else:
                        res_sum += c
                        res_pos += 1
                        zero[r + c] = zero.get(r + c, 0) + 1
            if full_reservations and last:
                res_sum += last * full_reservations
                res_pos += full_reservations
                zero[r + last] = zero.get(r + last, 0) + full_reservations
        done = r - start
        if record is not None and done:
            record[0].append(res_sum)
            record[1].append(crossed)
        self._round, self._res_sum, self._res_pos = r, res_sum, res_pos
        n = len(self._seqs) * done
        self._tokens += n
        self._seq_tokens += n
        self._held_blocks += crossed
        self._logical_blocks += crossed
        return done

    def _recorded_plain_rounds(self, rounds: int, record: tuple[list[int], list[int]]) -> int:
        """_advance_rounds with `record` while no live sequence is indexed (no block to register when it fills) and
        freed blocks are not cached (a plain free queue): the same steps in the same order, without the tests that
        cannot apply. The engine's fast-forwarded stretches spend most of their time in this loop (one turn per
        round)."""
        # Deliberate copy of _advance_rounds for speed;
        # tests/sim/serving/test_fast_forward.py::test_fast_forward_equals_step_by_step proves it exact.
        bs, ring, unordered, zero, fill = self.block_size, self._ring, self._ring_unordered, self._res_zero, self.fill
        popleft, refs = self.pool.front_popper(), self.pool.ref_counts
        last = bs - 1
        res_sum, res_pos = self._res_sum, self._res_pos
        add_reserved, add_blocks = record[0].append, record[1].append
        crossed = 0
        r = start = self._round
        stop = start + rounds
        free = self.pool.num_free_blocks
        while r < stop:
            k = r % bs
            crossers = ring[k]
            if crossers:
                if crossed + len(crossers) > free:  # the free blocks do not cover this round: stop before it
                    break
                if unordered[k]:
                    crossers = self._ring_bucket(k)
            res_sum -= res_pos  # each reserving sequence fills a reserved slot
            r += 1
            if zero:
                res_pos -= zero.pop(r, 0)
            if crossers:  # each takes a block from the front of the free queue, in live order (as _cross)
                crossed += len(crossers)
                full_reservations = 0  # crossers that reserve all `last` empty slots of their new block
                for s in crossers.values():
                    block = popleft()  # the front of the free queue, reference count 1
                    refs[block] = 1
                    table = s.block_table
                    if table:
                        fill[table[-1]] = bs  # no longer a last block: its fill must be exact
                    table.append(block)  # a last block: its fill is computed when needed (_tail_fill)
                    c = s.final_len - s.base - r  # _res_add, inlined: one token in a fresh block
                    if c > 0:  # (no live sequence has forked: run_decode's precondition)
                        if c >= last:
                            full_reservations += 1
                        else:
                            res_sum += c
                            res_pos += 1
                            zero[r + c] = zero.get(r + c, 0) + 1
                if full_reservations and last:
                    res_sum += last * full_reservations
                    res_pos += full_reservations
                    zero[r + last] = zero.get(r + last, 0) + full_reservations
            add_reserved(res_sum)
            add_blocks(crossed)
        done = r - start
        self._round, self._res_sum, self._res_pos = r, res_sum, res_pos
        n = len(self._seqs) * done
        self._tokens += n
        self._seq_tokens += n
        self._held_blocks += crossed
        self._logical_blocks += crossed
        return done

    def _cross(self, s: _Seq, r: int) -> None:
        """s's round-r token starts a new block (held-block and logical counters are the caller's)."""
        table = s.block_table
        if table:
            self.fill[table[-1]] = self.block_size
        block = self.pool.allocate()
        self.fill[block] = 1
        table.append(block)
        if not s.forked:
            self._res_add(s, s.base + r)

    def append_each(self, seq_ids: list[int]) -> int | None:
        seqs = self._seqs
        if len(seq_ids) == len(seqs) and seq_ids == list(seqs):
            return self.append_round()
        try:
            listed = [seqs[i] for i in seq_ids]
        except KeyError:
            return None
        if len(set(seq_ids)) != len(seq_ids):
            return None
        bs, refs, r = self.block_size, self.pool.ref_counts, self._round
        need = 0
        for s in listed:
            if (s.base + r) % bs == 0:
                need += 1
            elif refs[s.block_table[-1]] > 1:
                return None  # copy-on-write: the one-by-one path handles it
        if need > self.pool.num_free_blocks:
            return None
        for seq_id in seq_ids:
            self.append(seq_id, 1)
        return sum(s.base for s in listed) + len(listed) * self._round

    def can_fork(self, parent_id: int, child_id: int) -> bool:
        parent = self._seqs.get(parent_id)
        if parent is None or child_id in self._seqs:
            return False
        return self.sharing or len(parent.block_table) <= self.pool.num_free_blocks

    def fork(self, parent_id: int, child_id: int) -> None:
        if not self.can_fork(parent_id, child_id):
            raise AllocationError(f"cannot fork sequence {parent_id} into {child_id}")
        p = self._seqs[parent_id]
        tokens = p.base + self._round
        self._mark_forked(parent_id, p, tokens)
        if p.block_table:
            self.fill[p.block_table[-1]] = self._tail_fill(p, tokens)
        if p.indexed:
            self._sync_runs(p, tokens)
        if self.sharing:
            for block in p.block_table:
                self._ref(block)
            table = list(p.block_table)
        else:  # the counterfactual: a private copy of every block
            table = []
            for src in p.block_table:
                dst = self._take_block()
                self.fill[dst] = self.fill[src]
                self._tokens += self.fill[dst]
                self._copies.append((src, dst))
                table.append(dst)
        child = _Seq(
            child_id,
            table,
            p.base,
            p.final_len,
            self._next_order,
            list(p.runs),
            p.run_end,
            list(p.hashes),
            p.indexed,
            forked=True,
        )
        self._next_order += 1
        self._seqs[child_id] = child
        self._forked[child_id] = child
        self._num_indexed += child.indexed
        self._logical_blocks += len(table)
        self._seq_tokens += tokens
        self._ring_add(child_id, child)

    def free(self, seq_id: int) -> None:
        s = self._seqs.pop(seq_id, None)
        if s is None:
            raise AllocationError(f"sequence {seq_id} is not live")
        tokens = s.base + self._round
        self._detach(seq_id, s, tokens)
        if s.forked:
            del self._forked[seq_id]
        self._num_indexed -= s.indexed
        self._seq_tokens -= tokens
        # Reverse order, as vLLM: the tail is the least likely to be reused, so it is evicted first.
        pool, fill = self.pool, self.fill
        if s.block_table:
            fill[s.block_table[-1]] = self._tail_fill(s, tokens)
        if not pool.retain_cached and not pool.block_hash and not s.forked:
            # Nothing shared or indexed. Deliberate copy of the release_many path below for speed;
            # tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants proves it exact.
            table = s.block_table
            for block in table:
                fill[block] = 0
            pool.release_exclusive(table[::-1])
            self._held_blocks -= len(table)
            self._tokens -= tokens
            self._logical_blocks -= len(table)
            return
        freed = pool.release_many(reversed(s.block_table))
        self._held_blocks -= len(freed)
        block_hash = pool.block_hash
        for block in freed:
            self._tokens -= fill[block]
            if block not in block_hash:
                fill[block] = 0
        self._logical_blocks -= len(s.block_table)

    def take_copy_ops(self) -> list[tuple[int, int]]:
        ops, self._copies = self._copies, []
        return ops

    # --- fast-forward: many rounds of decode at once (exactly as the appends one by one) ----------------------------
    def plan_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        if max_rounds <= 0 or len(seq_ids) != len(self._seqs):
            return None
        seqs = [self._seqs.get(i) for i in seq_ids]
        if any(s is None for s in seqs):
            return None
        bs = self.block_size
        if self._forked and self._shared_partial_tail():  # copied on the first write: not plannable
            return None
        n = len(seqs)
        t = np.fromiter((s.base for s in seqs), np.int64, n) + self._round
        final = np.fromiter((s.final_len for s in seqs), np.int64, n)
        steps = np.arange(1, max_rounds + 1, dtype=np.int64)
        new_blocks = (-(-(t[:, None] + steps) // bs) + (t // -bs)[:, None]).sum(axis=0)
        rounds = int(np.searchsorted(new_blocks, self.pool.num_free_blocks, side="right"))
        new_blocks, steps = new_blocks[:rounds], steps[:rounds]
        tr = t[:, None] + steps
        # a sequence's last block has (-tokens) mod bs empty slots; it will fill at most final - tokens of them
        reserved = np.minimum((-tr) % bs, np.maximum(final[:, None] - tr, 0)).sum(axis=0)
        held = (self._held_blocks + new_blocks) * bs
        tokens = self._tokens + n * steps
        return DecodePlan(
            seq_ids=list(seq_ids),
            rounds=rounds,
            token_states=tokens,
            reserved=reserved,
            internal_fragmentation=held - tokens - reserved,
            external_fragmentation=np.zeros(rounds, np.int64),
            free=(self.pool.num_free_blocks - new_blocks) * bs,
            unshared=(self._logical_blocks + new_blocks) * bs,
        )

    def run_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        """plan_decode and apply_decode in one pass over the rounds (live order, no forked sequence), else both."""
        if max_rounds <= 0 or self._forked or seq_ids != list(self._seqs):
            return super().run_decode(seq_ids, max_rounds, next_final_len, next_prompt_len)
        bs, n = self.block_size, len(seq_ids)
        held0, tokens0, free0, logical0 = (
            self._held_blocks,
            self._tokens,
            self.pool.num_free_blocks,
            self._logical_blocks,
        )
        record: tuple[list[int], list[int]] = ([], [])
        if self._num_indexed or self.pool.retain_cached:
            rounds = self._advance_rounds(max_rounds, record)
        else:
            rounds = self._recorded_plain_rounds(max_rounds, record)
        return BlockDecodePlan(list(seq_ids), rounds, bs, n, tokens0, held0, free0, logical0, record[0], record[1])

    def apply_decode(self, plan: DecodePlan, rounds: int) -> None:
        if not 0 <= rounds <= plan.rounds:
            raise AllocationError(f"cannot apply {rounds} rounds of a {plan.rounds}-round plan")
        if plan.seq_ids != list(self._seqs):
            for _ in range(rounds):
                for seq_id in plan.seq_ids:
                    self.append(seq_id, 1)
        else:
            self._advance_rounds(rounds)

    def drop_cache(self) -> None:
        """Forget cached content of free blocks (prefix cache), and the host tier's cached blocks."""
        for block in self.pool.cached_free_blocks():
            self.pool.unregister(block)
            self.fill[block] = 0
        if self.host is not None:
            self.host.drop_cache()

    def attach_host(self, host: HostTier) -> None:
        """Give this allocator a host tier (sim.allocators.host_tier): swap preemption, and with a prefix cache, the
        offloaded prefix cache (blocks the GPU evicts go to the host)."""
        self.host = host
        if self.pool.retain_cached:
            self.pool.on_evict = host.offload

    def take_transfers(self) -> list:
        """Host-link copies recorded since the last call (sim.allocators.host_tier.Transfer), in order."""
        return self.host.take_transfers() if self.host is not None else []

    def drop_transfers(self, transfers: list) -> None:
        if self.host is not None:
            self.host.uncount(transfers)

    # --- inspection -----------------------------------------------------------------------------------------------
    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].base + self._round

    def total_tokens(self, seq_ids: list[int]) -> int:
        if len(seq_ids) == len(self._seqs):  # every live sequence (the ids are distinct and live)
            return self._seq_tokens
        return super().total_tokens(seq_ids)

    def live_sequences(self) -> list[int]:
        """Ids of live sequences, in live order."""
        return list(self._seqs)

    def placement(self, seq_id: int) -> BlockTablePlacement:
        return BlockTablePlacement(self.block_size, tuple(self._seqs[seq_id].block_table))

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def held_without_sharing(self) -> int:
        """Token slots the live sequences would hold if no block were shared."""
        return self._logical_blocks * self.block_size

    def _reserved_scan(self, seqs) -> int:
        """Empty slots of partly filled last blocks that a sequence holding them will still fill (for a block shared
        by several sequences, the most that any one of them still needs), over `seqs`, by looking at each."""
        bs, refs, r = self.block_size, self.pool.ref_counts, self._round
        total = 0
        shared: dict[int, tuple[int, int]] = {}
        for s in seqs:
            t = s.base + r
            partial = t % bs
            if partial and s.final_len > t:
                block = s.block_table[-1]
                if refs[block] > 1:  # every holder of a shared, partly filled block holds the same tokens
                    shared[block] = (partial, max(shared.get(block, (0, 0))[1], s.final_len - t))
                else:
                    total += min(bs - partial, s.final_len - t)
        return total + sum(min(bs - partial, n) for partial, n in shared.values())

    def _reserved(self) -> int:
        return self._res_sum + (self._reserved_scan(self._forked.values()) if self._forked else 0)

    def memory(self, next_final_len: int | None = None, next_prompt_len: int | None = None) -> MemoryBreakdown:
        held = self._held_blocks * self.block_size
        reserved = self._reserved()
        return MemoryBreakdown(
            token_states=self._tokens,
            reserved=reserved,
            internal_fragmentation=held - self._tokens - reserved,
            external_fragmentation=0,
            free=self.pool.num_free_blocks * self.block_size,
        )

    def check(self) -> None:
        bs, r = self.block_size, self._round
        for s in self._seqs.values():  # write back the stale fills of last blocks
            if s.block_table:
                self.fill[s.block_table[-1]] = self._tail_fill(s, s.base + r)
        refs = [0] * self.num_blocks
        for seq_id, s in self._seqs.items():
            tokens = s.base + r
            assert tokens >= 0, f"sequence {seq_id} holds {tokens} tokens"
            assert len(s.block_table) == ceil_div(tokens, bs), (
                f"sequence {seq_id} holds {tokens} tokens in {len(s.block_table)} blocks"
            )
            for i, block in enumerate(s.block_table):
                refs[block] += 1
                expected = min(bs, tokens - i * bs)
                assert self.fill[block] == expected, (
                    f"block {block} (logical {i} of sequence {seq_id}) has {self.fill[block]} tokens, expected "
                    f"{expected}"
                )
            assert self._ring[(-s.base) % bs].get(seq_id) is s, f"sequence {seq_id} is not in its ring bucket"
            assert s.forked == (seq_id in self._forked), f"forked set wrong for sequence {seq_id}"
        assert sum(map(len, self._ring)) == len(self._seqs), "ring holds sequences that are not live"
        orders = [s.order for s in self._seqs.values()]
        assert orders == sorted(orders), "live order is not admission/fork order"
        assert refs == self.pool.ref_counts, "reference counts differ from block-table entries"
        free = self.pool.free_block_ids()
        assert sorted(free) == [b for b, r_ in enumerate(refs) if r_ == 0], (
            "free queue differs from unreferenced blocks"
        )
        assert self._held_blocks == self.num_blocks - len(free), "held-block counter is wrong"
        assert self._tokens == sum(self.fill[b] for b, r_ in enumerate(refs) if r_), "token counter is wrong"
        assert self._seq_tokens == sum(s.base + r for s in self._seqs.values()), "sequence-token counter is wrong"
        assert self._logical_blocks == sum(len(s.block_table) for s in self._seqs.values()), "logical counter wrong"
        assert self._num_indexed == sum(s.indexed for s in self._seqs.values()), "indexed counter is wrong"
        plain = [s for s in self._seqs.values() if not s.forked]
        reserving = [self._reserving(s, s.base + r) for s in plain]
        assert self._res_sum == sum(reserving), "running sum of reserved slots is stale"
        assert self._res_pos == sum(1 for c in reserving if c), "count of reserving sequences is stale"
        zero: dict[int, int] = {}
        for c in reserving:
            if c:
                zero[r + c] = zero.get(r + c, 0) + 1
        assert self._res_zero == zero, "rounds at which reservations end are stale"
        assert self._reserved() == self._reserved_scan(self._seqs.values()), "reserved slots are stale"
        for block, h in self.pool.block_hash.items():
            assert self.pool.hash_block[h] == block, f"hash index of block {block} is inconsistent"
            assert self.fill[block] == bs, f"registered block {block} is not full"
        assert len(self.pool.hash_block) == len(self.pool.block_hash), "hash index sizes differ"
        if not self.pool.retain_cached:
            assert not self.pool.cached_free_blocks(), "a free block is still indexed without a prefix cache"
        if self.host is not None:
            self.host.check()


class PagedPrefixCache(PagedAllocator):
    name = "paged-prefix-cache"
    description = "paged, and full blocks of finished sequences stay cached (LRU eviction) for prefix reuse"
    retain_cached = True
