"""Paged KV cache over KV-cache groups (vLLM V1's hybrid KV cache manager): one pool of equal-size blocks shared by
every group, one block table per group per sequence, and sliding-window groups that give back the blocks their
window has left.

Long file: one allocator class whose every method reads and writes the per-group block tables, with its decode round
(`_decode_one`, `run_decode`: the hot loop of a replay) kept beside the state it touches.

Read from vllm-project/vllm: docs/design/hybrid_kv_cache_manager.md, vllm/v1/core/single_type_kv_cache_manager.py
(`SlidingWindowManager.get_num_skipped_tokens`, `remove_skipped_blocks`, `find_longest_cache_hit`) and
vllm/v1/core/kv_cache_coordinator.py. The groups come from `sim.hardware.kv_groups` (any objects with `kind` and
`window` do); `groups=None` is one full-attention group, which is plain paged attention.

Capacity: a block of the pool is one page of one group: `block_size` token slots of every layer of that group
(`sim.hardware.kv_groups.KVLayout.page_bytes`; every group's page has the same bytes). A sequence of t tokens maps
ceil(t / block_size) logical blocks in every group. Memory is accounted in token slots of the pool
(num_blocks x block_size), as every allocator does; one slot is `KVLayout.slot_bytes(tp)` bytes.

Sliding windows, as vLLM: a token at position p attends to positions p - window + 1 .. p. When a sequence that has
computed c tokens grows (its next token is at position c), the first max(0, c - window + 1) positions are out of every
later token's window (vLLM `get_num_skipped_tokens`); the sliding group gives back the blocks that lie entirely
among them and keeps a placeholder (`NULL_BLOCK`, vLLM's null block) at those table positions, which always form a
prefix of the table. c is the sequence's `computed`: its tokens before its latest growth (append), or the prefix-cache
hit at admission, as vLLM frees at `allocate_slots` from `num_computed_tokens` before taking blocks for the new
tokens. So after a one-token decode append to length t, positions >= t - window are kept; after a prompt chunk the
whole chunk's blocks are held until the next growth, as in vLLM. Full and MLA groups keep everything.

Sharing (`sharing=True`): fork shares every block of every group (reference counts); placeholders stay placeholders
in both branches; the first write into a shared, partly filled last block of a group gives the writer a private copy
(copy-on-write, recorded for the executor). Prefix sharing (live, and with `paged-hybrid-prefix-cache` cached): full
blocks are indexed by (group, chained content key); a new sequence's hit is the longest prefix of whole blocks valid
in every group: every block of a full/MLA group, and for a sliding group the blocks inside the window of the hit
length (vLLM's `HybridKVCacheCoordinator`: the full groups' left-to-right hit, then the longest sliding hit within
it). Blocks a window gives back go to the end of the one free queue (least recently used first), as vLLM does; with
the cache they stay indexed until evicted.

Memory: the five categories of `MemoryBreakdown` over the pool (a held block's slots are token states, reserved or
internal fragmentation as in `paged`; a block partly out of the window still holds its tokens), and per group
(`memory_by_group`) the same categories plus `window_freed`: slots a full-attention layout would hold for the live
sequences at the positions the window let go (one per distinct released block, so a block shared by forked branches
counts once, and an indexed block once per content, so that a prefix hit that skipped the same positions shares it).
Free memory belongs to the pool, not to a group: a group's `free` is 0 and the pool's free slots are `memory().free`.

Not modelled: vLLM's lookahead (speculative) slots, eagle's extra hit block, groups with different block sizes, and
KV connectors' external tokens (a disaggregated decode's transferred prefix counts as computed only where it is a
hit). vLLM's coordinator finds prefix hits for full + at most one other kind; the rule here (every group valid)
covers any mix.

Replay: `uses_kv_groups` tells the replay to pass `groups=kv_layout(model).groups` and to size the pool in pages of
that layout (`KVLayout.num_blocks`, one slot = `KVLayout.slot_bytes(tp)` bytes), which equals today's budget for a
model of one attention kind.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from sim.allocators.base import AllocationError, BlockTablePlacement, KVAllocator, MemoryBreakdown, TokenContent
from sim.allocators.block_pool import BlockPool
from sim.allocators.fast_paths import DecodePlan
from sim.allocators.prefix_hash import Run, chain_key, content_length, runs_from
from sim.hardware.kv_groups import FULL, KINDS, SLIDING_WINDOW
from sim.units import ceil_div

#: The placeholder at block-table positions a sliding window has given back (vLLM's null block). Never a pool block.
NULL_BLOCK = -1


@dataclass(frozen=True)
class GroupSpec:
    """What the allocator needs of a KV-cache group: its kind ("full", "sliding_window", "mla") and window."""

    kind: str = FULL
    window: int | None = None


def normalize_groups(groups) -> tuple[GroupSpec, ...]:
    """GroupSpecs from objects with `kind` and `window` (e.g. `sim.hardware.kv_groups.KVGroup`); None: one full
    group. Raises ValueError for an unknown kind, a sliding group without a positive integer window, or a window on
    another kind."""
    if groups is None:
        return (GroupSpec(),)
    out = []
    for g in groups:
        kind, window = getattr(g, "kind", None), getattr(g, "window", None)
        if kind not in KINDS:
            raise ValueError(f"KV-cache group kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == SLIDING_WINDOW:
            if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
                raise ValueError(f"a sliding-window group needs a positive integer window, got {window!r}")
        elif window is not None:
            raise ValueError(f"a {kind} group has no window, got {window!r}")
        out.append(GroupSpec(kind, window))
    if not out:
        raise ValueError("at least one KV-cache group is needed")
    return tuple(out)


@dataclass(frozen=True)
class GroupMemory:
    """One group's share of the pool in token slots (see the module docstring): the held categories of
    `MemoryBreakdown` (free and external fragmentation are the pool's, so 0 here) and window_freed."""

    group: int
    kind: str
    window: int | None
    token_states: int
    reserved: int
    internal_fragmentation: int
    external_fragmentation: int
    free: int
    window_freed: int

    @property
    def held(self) -> int:
        return self.token_states + self.reserved + self.internal_fragmentation

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(eq=False)
class _Seq:
    """A live sequence: tokens held, tokens computed before its latest growth (its window is measured from there), one
    block table per group (NULL_BLOCK for released leading positions) and, per group, the identity of each released
    position (for window_freed)."""

    seq_id: int
    tokens: int
    final_len: int
    computed: int
    tables: list[list[int]]
    ghosts: list[list[Hashable]]
    runs: list[Run] = field(default_factory=list)  # (tag, first offset, length) over [0, run_end)
    run_end: int = 0
    hashes: list[Hashable] = field(default_factory=list)  # chained content key of each full block, in order
    indexed: bool = False  # its full blocks go into the index (only where another sequence could match them)


class HybridPagedAllocator(KVAllocator):
    """Paged KV cache over KV-cache groups; see the module docstring.

    Args:
        num_blocks, block_size, max_model_len: as every allocator.
        groups: the KV-cache groups (objects with `kind` and `window`, e.g. `sim.hardware.kv_groups.kv_groups(model)`);
            None: one full-attention group.
        sharing: False shares nothing (the --no-sharing counterfactual): forks copy every held block, no prefix hits.
    """

    name = "paged-hybrid"
    description = (
        "paged blocks per KV-cache group (full, sliding window, MLA) from one pool; sliding windows give blocks back"
    )
    grows_on_demand = True
    supports_fork = True
    retain_cached = False
    #: the replay passes the model's KV-cache groups (`groups`) and sizes the pool in their pages
    uses_kv_groups: ClassVar[bool] = True

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int, groups=None, sharing: bool = True):
        super().__init__(num_blocks, block_size, max_model_len)
        self.groups = normalize_groups(groups)
        self.sharing = sharing
        self.pool = BlockPool(num_blocks, retain_cached=self.retain_cached and sharing)
        n = len(self.groups)
        self._windows = [g.window if g.kind == SLIDING_WINDOW else None for g in self.groups]
        self._sliding = [i for i, w in enumerate(self._windows) if w is not None]
        self._full = [i for i, w in enumerate(self._windows) if w is None]
        #: the group whose block table `placement` returns by default: the first full/MLA group, else group 0
        self.primary_group = self._full[0] if self._full else 0
        self.fill = [0] * num_blocks  # tokens written in each block (held or cached)
        self.group_of = [-1] * num_blocks  # the group a block was last taken for
        self._serial = [0] * num_blocks  # how many times each block was taken (identifies released positions)
        self._held = [0] * n  # blocks with reference count > 0, per group
        self._tok = [0] * n  # sum of fill over those blocks, per group
        self._logical = 0  # non-placeholder block-table entries over all live sequences and groups
        self._ghost_refs: list[Counter] = [Counter() for _ in range(n)]  # released position -> sequences holding it
        self._seqs: dict[int, _Seq] = {}
        self._copies: list[tuple[int, int]] = []
        self.num_cow_copies = 0
        self.hit_tokens = 0

    # --- windows --------------------------------------------------------------------------------------------------
    def _skipped_blocks(self, g: int, computed: int) -> int:
        """Leading logical blocks of group g that no later token of a sequence that computed `computed` tokens
        attends to (vLLM: get_num_skipped_tokens // block_size)."""
        w = self._windows[g]
        if w is None:
            return 0
        return max(0, computed - w + 1) // self.block_size

    # --- block movement -------------------------------------------------------------------------------------------
    def _take(self, g: int) -> int:
        block = self.pool.allocate()
        self.fill[block] = 0
        self.group_of[block] = g
        self._serial[block] += 1
        self._held[g] += 1
        return block

    def _ref(self, block: int) -> None:
        if self.pool.ref_counts[block] == 0:
            g = self.group_of[block]
            self._held[g] += 1
            self._tok[g] += self.fill[block]
        self.pool.incref(block)

    def _release(self, blocks) -> None:
        """Drop one reference to each block, in order (the ones that become free go to the end of the free queue)."""
        freed = self.pool.release_many(blocks)
        block_hash, fill, group_of = self.pool.block_hash, self.fill, self.group_of
        for block in freed:
            g = group_of[block]
            self._held[g] -= 1
            self._tok[g] -= fill[block]
            if block not in block_hash:
                fill[block] = 0

    # --- token identities and block keys (sim.allocators.prefix_hash) ----------------------------------------------
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

    def _register_full_blocks(self, s: _Seq) -> None:
        """Index s's full blocks of every group under (group, chained key), where the group still holds them."""
        bs = self.block_size
        full = s.tokens // bs
        if len(s.hashes) >= full:
            return
        self._sync_runs(s, s.tokens)
        register = self.pool.register
        while len(s.hashes) < full:
            index = len(s.hashes)
            key = chain_key(s.hashes[-1] if s.hashes else None, s.runs, index, bs)
            s.hashes.append(key)
            for g, table in enumerate(s.tables):
                block = table[index]
                if block != NULL_BLOCK:
                    register(block, (g, key))

    def _hits(self, seq_id: int, num_tokens: int, content: TokenContent | None) -> tuple[int, list[Hashable]]:
        """(h, keys): the longest prefix of h whole blocks valid in every group (at least one token is left to
        compute), and the chained keys of those h blocks."""
        if not self.sharing or num_tokens <= 1 or not (self.pool.retain_cached or (content and content.runs)):
            return 0, []
        bs = self.block_size
        runs = runs_from(content, seq_id, num_tokens)
        hash_block = self.pool.hash_block
        keys: list[Hashable] = []
        prev = None
        for index in range((num_tokens - 1) // bs):  # full groups: every block, left to right, to the first miss
            prev = chain_key(prev, runs, index, bs)
            if any((g, prev) not in hash_block for g in self._full):
                break
            keys.append(prev)
        h = len(keys)
        if self._sliding and h:
            # run[g][i]: cached blocks of group g ending at logical block i, contiguously
            runs_of = []
            for g in self._sliding:
                run, count = [], 0
                for key in keys:
                    count = count + 1 if (g, key) in hash_block else 0
                    run.append(count)
                runs_of.append(run)
            while h:  # the longest prefix whose blocks inside the window are cached in every sliding group
                if all(
                    run[h - 1] >= h - self._skipped_blocks(g, h * bs)
                    for g, run in zip(self._sliding, runs_of, strict=True)
                ):
                    break
                h -= 1
        return h, keys[:h]

    def _hit_blocks(self, h: int, keys: list[Hashable]) -> list[list[int]]:
        """Per group, the cached blocks a hit of h blocks maps: all h for a full group, those inside the window of
        the hit for a sliding group (the positions before it are placeholders)."""
        hash_block = self.pool.hash_block
        c = h * self.block_size
        return [
            [hash_block[(g, keys[i])] for i in range(self._skipped_blocks(g, c), h)] for g in range(len(self.groups))
        ]

    def prefix_hit_tokens(self, seq_id: int, num_tokens: int, content: TokenContent | None = None) -> int:
        return self._hits(seq_id, num_tokens, content)[0] * self.block_size

    # --- the interface --------------------------------------------------------------------------------------------
    def _blocks_at(self, tokens: int, computed: int) -> int:
        """Blocks a lone sequence of `tokens` tokens that computed `computed` of them holds over every group."""
        n = ceil_div(tokens, self.block_size)
        return sum(n - self._skipped_blocks(g, computed) for g in range(len(self.groups)))

    def peak_blocks(self, final_len: int, prompt_len: int | None = None) -> int:
        """The most blocks a lone sequence holds: prompt_len tokens at admission (None: all final_len at once), then
        one token per append up to final_len. After the prompt, the count over lengths t + block_size is never below
        that over t (full groups grow, a sliding group's count is periodic once past its window), so the peak is
        among the last block_size lengths."""
        prompt = final_len if prompt_len is None else max(0, min(prompt_len, final_len))
        peak = self._blocks_at(prompt, 0)
        for t in range(max(prompt + 1, final_len - self.block_size + 1), final_len + 1):
            peak = max(peak, self._blocks_at(t, t - 1))
        return peak

    def never_fits(self, final_len: int, prompt_len: int | None = None) -> str | None:
        need = self.peak_blocks(final_len, prompt_len)
        if need > self.num_blocks:
            return f"needs {need:,} blocks; the KV cache has {self.num_blocks:,}"
        return None

    def _admit_need(self, seq_id: int, num_tokens: int, content: TokenContent | None):
        """(hit blocks h, their keys, per-group hit blocks, blocks needed from the free queue)."""
        h, keys = self._hits(seq_id, num_tokens, content)
        hit_blocks = self._hit_blocks(h, keys) if h else None
        need = (ceil_div(num_tokens, self.block_size) - h) * len(self.groups)
        if hit_blocks:
            refs = self.pool.ref_counts
            need += sum(1 for blocks in hit_blocks for b in blocks if refs[b] == 0)  # cached: taken out of the queue
        return h, keys, hit_blocks, need

    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        if seq_id in self._seqs or num_tokens < 0:
            return False
        return self._admit_need(seq_id, num_tokens, content)[3] <= self.pool.num_free_blocks

    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        if seq_id in self._seqs or num_tokens < 0:
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens)")
        h, keys, hit_blocks, need = self._admit_need(seq_id, num_tokens, content)
        if need > self.pool.num_free_blocks:
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens): {need} blocks needed")
        bs, n = self.block_size, len(self.groups)
        computed = h * bs
        tables: list[list[int]] = []
        ghosts: list[list[Hashable]] = []
        for g in range(n):  # hits first: a cached block must leave the free queue before allocation could evict it
            skipped = self._skipped_blocks(g, computed)
            ghost = [("content", g, keys[i]) for i in range(skipped)]
            table = [NULL_BLOCK] * skipped
            for block in hit_blocks[g] if hit_blocks else ():
                self._ref(block)
                table.append(block)
            for x in ghost:
                self._ghost_refs[g][x] += 1
            tables.append(table)
            ghosts.append(ghost)
        new = ceil_div(num_tokens, bs) - h
        for g, table in enumerate(tables):
            for i in range(new):
                block = self._take(g)
                k = min(bs, num_tokens - (h + i) * bs)
                self.fill[block] = k
                self._tok[g] += k
                table.append(block)
        indexed = self.sharing and (self.pool.retain_cached or bool(content and content.runs))
        s = _Seq(seq_id, num_tokens, final_len, computed, tables, ghosts, indexed=indexed, hashes=list(keys))
        if indexed:  # the content's runs all along, so that tokens written by later appends (prompt chunks) match
            covered = max(num_tokens, content_length(content))
            s.runs, s.run_end = runs_from(content, seq_id, covered), covered
        self._seqs[seq_id] = s
        self._logical += sum(len(t) - len(x) for t, x in zip(tables, ghosts, strict=True))
        if indexed:
            self._register_full_blocks(s)
        hit = computed
        self.hit_tokens += hit
        return hit

    def _append_need(self, s: _Seq, num_tokens: int) -> tuple[list[tuple[int, int]], list[int], int, int]:
        """(per sliding group the table range its window gives back, groups whose last block is copied on write,
        blocks needed, blocks that the give-back frees) to grow s by num_tokens."""
        bs, refs, old = self.block_size, self.pool.ref_counts, s.tokens
        releases, freed = [], 0
        for g in self._sliding:
            lo, hi = len(s.ghosts[g]), self._skipped_blocks(g, old)
            if hi > lo:
                releases.append((g, hi))
                freed += sum(1 for b in s.tables[g][lo:hi] if refs[b] == 1)
        cow = []
        if num_tokens > 0 and old % bs:
            cow = [g for g, table in enumerate(s.tables) if refs[table[-1]] > 1]
        new = ceil_div(old + num_tokens, bs) - ceil_div(old, bs)
        return releases, cow, len(cow) + new * len(self.groups), freed

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        s = self._seqs.get(seq_id)
        if s is None or num_tokens < 0:
            return False
        _, _, need, freed = self._append_need(s, num_tokens)
        return need <= self.pool.num_free_blocks + freed

    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        s = self._seqs.get(seq_id)
        if s is None or num_tokens < 0:
            raise AllocationError(f"sequence {seq_id} is not live")
        releases, cow, need, freed = self._append_need(s, num_tokens)
        if need > self.pool.num_free_blocks + freed:
            raise AllocationError(f"no free block for sequence {seq_id} to grow by {num_tokens}")
        self._grow(s, num_tokens, releases, cow)

    def _give_back(self, s: _Seq, g: int, hi: int) -> None:
        """Group g of s gives back its table positions up to hi (out of the window), leaving placeholders."""
        serial, block_hash = self._serial, self.pool.block_hash
        table, ghost, refs = s.tables[g], s.ghosts[g], self._ghost_refs[g]
        lo = len(ghost)
        gone = table[lo:hi]
        for i, block in enumerate(gone, lo):
            # the same for every branch that shared the block, and for a hit that skipped the same content
            key = block_hash.get(block)
            x = ("content", *key) if key is not None else (block, serial[block])
            ghost.append(x)
            refs[x] += 1
            table[i] = NULL_BLOCK
        self._logical -= len(gone)
        self._release(gone)  # oldest first: the first to be evicted of them

    def _decode_one(self, s: _Seq) -> None:
        """append(s, 1) where it copies nothing and the free blocks suffice (run_decode has checked the round):
        the steps of _grow for one token, in the same order."""
        bs, old = self.block_size, s.tokens
        for g in self._sliding:
            hi = max(0, old - self._windows[g] + 1) // bs  # _skipped_blocks, inlined
            if hi > len(s.ghosts[g]):
                self._give_back(s, g, hi)
        fill, tok = self.fill, self._tok
        if old % bs:
            for g, table in enumerate(s.tables):
                fill[table[-1]] += 1
                tok[g] += 1
        else:
            for g, table in enumerate(s.tables):
                block = self._take(g)
                fill[block] = 1
                tok[g] += 1
                table.append(block)
            self._logical += len(s.tables)
        s.tokens = old + 1
        s.computed = old
        if s.indexed and s.tokens % bs == 0:
            self._register_full_blocks(s)

    def _grow(self, s: _Seq, num_tokens: int, releases, cow) -> None:
        """append, once checked: the window's give-back first (as vLLM's allocate_slots), then copies, then blocks."""
        bs, fill = self.block_size, self.fill
        old = s.tokens
        for g, hi in releases:
            self._give_back(s, g, hi)
        for g in cow:  # the last block is shared and partly filled: write into a private copy
            table = s.tables[g]
            src = table[-1]
            dst = self._take(g)
            fill[dst] = fill[src]
            self._tok[g] += fill[dst]
            self._release([src])
            table[-1] = dst
            self._copies.append((src, dst))
            self.num_cow_copies += 1
        if num_tokens:
            end = old + num_tokens
            for g, table in enumerate(s.tables):
                pos = old
                while pos < end:
                    if pos % bs == 0:  # (then pos // bs == len(table))
                        table.append(self._take(g))
                        self._logical += 1
                    block = table[pos // bs]
                    k = min(end - pos, bs - pos % bs)
                    fill[block] += k
                    self._tok[g] += k
                    pos += k
        s.tokens = old + num_tokens
        s.computed = old
        if s.indexed:
            self._register_full_blocks(s)

    def can_fork(self, parent_id: int, child_id: int) -> bool:
        parent = self._seqs.get(parent_id)
        if parent is None or child_id in self._seqs:
            return False
        return self.sharing or self._entries(parent) <= self.pool.num_free_blocks

    @staticmethod
    def _entries(s: _Seq) -> int:
        return sum(len(t) - len(x) for t, x in zip(s.tables, s.ghosts, strict=True))

    def fork(self, parent_id: int, child_id: int) -> None:
        if not self.can_fork(parent_id, child_id):
            raise AllocationError(f"cannot fork sequence {parent_id} into {child_id}")
        p = self._seqs[parent_id]
        if p.indexed:
            self._sync_runs(p, p.tokens)
        tables = []
        for g, table in enumerate(p.tables):
            if self.sharing:
                for block in table:
                    if block != NULL_BLOCK:
                        self._ref(block)
                tables.append(list(table))
            else:  # the counterfactual: a private copy of every held block
                copied = []
                for src in table:
                    if src == NULL_BLOCK:
                        copied.append(src)
                        continue
                    dst = self._take(g)
                    self.fill[dst] = self.fill[src]
                    self._tok[g] += self.fill[dst]
                    self._copies.append((src, dst))
                    copied.append(dst)
                tables.append(copied)
        if self.sharing:
            ghosts = [list(x) for x in p.ghosts]
        else:  # the counterfactual would hold a copy of every position for each branch, the given-back ones too
            ghosts = [[("copy", child_id, x) for x in ghost] for ghost in p.ghosts]
        for g, ghost in enumerate(ghosts):
            for x in ghost:
                self._ghost_refs[g][x] += 1
        child = _Seq(
            child_id,
            p.tokens,
            p.final_len,
            p.computed,
            tables,
            ghosts,
            list(p.runs),
            p.run_end,
            list(p.hashes),
            p.indexed,
        )
        self._seqs[child_id] = child
        self._logical += self._entries(child)

    def free(self, seq_id: int) -> None:
        s = self._seqs.pop(seq_id, None)
        if s is None:
            raise AllocationError(f"sequence {seq_id} is not live")
        self._logical -= self._entries(s)
        for g, (table, ghost) in enumerate(zip(s.tables, s.ghosts, strict=True)):
            # Group by group, each tail first (as vLLM's coordinator): the tail is the least likely to be reused.
            self._release([b for b in reversed(table) if b != NULL_BLOCK])
            refs = self._ghost_refs[g]
            for x in ghost:
                left = refs[x] - 1
                if left:
                    refs[x] = left
                else:
                    del refs[x]

    def take_copy_ops(self) -> list[tuple[int, int]]:
        ops, self._copies = self._copies, []
        return ops

    def drop_cache(self) -> None:
        """Forget cached content of free blocks (prefix cache)."""
        for block in self.pool.cached_free_blocks():
            self.pool.unregister(block)
            self.fill[block] = 0

    # --- fast-forward: rounds of decode carried out one append at a time ---------------------------------------------
    def _round_fits(self, seqs: list[_Seq], quiet: bool) -> bool:
        """Whether one token for each of seqs, in order, succeeds without a copy (the give-backs of earlier appends
        of the round count, through a reference-count overlay). quiet: also no give-back, and no block taken while a
        prefix cache holds indexed blocks (an allocation may evict one)."""
        bs, refs, windows = self.block_size, self.pool.ref_counts, self._windows
        delta: dict[int, int] = {}
        free = self.pool.num_free_blocks
        n = len(self.groups)
        evicts = quiet and self.pool.retain_cached and bool(self.pool.block_hash)
        for s in seqs:
            old = s.tokens
            for g in self._sliding:
                table = s.tables[g]
                for i in range(len(s.ghosts[g]), max(0, old - windows[g] + 1) // bs):  # _skipped_blocks, inlined
                    if quiet:
                        return False
                    b = table[i]
                    d = delta.get(b, 0) - 1
                    delta[b] = d
                    if refs[b] + d == 0:
                        free += 1
            if old % bs:
                for table in s.tables:
                    b = table[-1]
                    if refs[b] + delta.get(b, 0) > 1:
                        return False  # copy-on-write: the one-by-one path handles it
            else:
                free -= n
                if free < 0 or evicts:
                    return False
        return True

    def run_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        """Up to max_rounds rounds of one token for each of seq_ids in order, made as the appends one by one, stopping
        before the first round that would fail or copy a block; the memory after each round is recorded.

        With sliding groups, while a request waits (next_final_len is not None), it also stops before a round that
        gives a block back or, with a prefix cache holding indexed blocks, takes one. The scheduler counts a stretch
        as free of events because the head of the queue cannot be admitted now, which stays true only while free
        blocks do not grow and the head's prefix hit does not shrink (with chunked prefill a shorter hit admits fewer
        tokens): a give-back frees a block (and, without the cache, unindexes it); taking a block may evict a cached
        one. Without sliding groups no block is given back, and eviction acts as in `paged`."""
        if max_rounds <= 0 or len(set(seq_ids)) != len(seq_ids):
            return None
        seqs = [self._seqs.get(i) for i in seq_ids]
        if any(s is None for s in seqs):
            return None
        quiet = next_final_len is not None and bool(self._sliding)
        rows: list[tuple[int, ...]] = []
        by_group: list[tuple[GroupMemory, ...]] = []
        for _ in range(max_rounds):
            if not self._round_fits(seqs, quiet):
                break
            for s in seqs:
                self._decode_one(s)
            groups = self.memory_by_group()
            m = self._breakdown(groups)
            rows.append(
                (m.token_states, m.reserved, m.internal_fragmentation, 0, m.free, self._logical * self.block_size)
            )
            by_group.append(groups)
        cols = np.array(rows, dtype=np.int64).reshape(len(rows), 6).T
        return DecodePlan(
            seq_ids=list(seq_ids),
            rounds=len(rows),
            token_states=cols[0],
            reserved=cols[1],
            internal_fragmentation=cols[2],
            external_fragmentation=cols[3],
            free=cols[4],
            unshared=cols[5],
            detail={"by_group": by_group},
        )

    def plan_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        return copy.deepcopy(self).run_decode(seq_ids, max_rounds, next_final_len, next_prompt_len)

    def apply_decode(self, plan: DecodePlan, rounds: int) -> None:
        if not 0 <= rounds <= plan.rounds:
            raise AllocationError(f"cannot apply {rounds} rounds of a {plan.rounds}-round plan")
        for _ in range(rounds):
            for seq_id in plan.seq_ids:
                self.append(seq_id, 1)

    # --- inspection -----------------------------------------------------------------------------------------------
    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].tokens

    def placement(self, seq_id: int, group: int | None = None) -> BlockTablePlacement:
        """The block table of one group (default: `primary_group`); NULL_BLOCK marks positions a window gave back."""
        g = self.primary_group if group is None else group
        return BlockTablePlacement(self.block_size, tuple(self._seqs[seq_id].tables[g]))

    def block_tables(self, seq_id: int) -> tuple[tuple[int, ...], ...]:
        """Every group's block table of a live sequence, in group order."""
        return tuple(tuple(t) for t in self._seqs[seq_id].tables)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def held_without_sharing(self) -> int:
        """Token slots the live sequences would hold if no block were shared (placeholders hold nothing)."""
        return self._logical * self.block_size

    def _reserved_by_group(self) -> list[int]:
        """Per group: empty slots of partly filled last blocks that a sequence holding them will still fill (for a
        block shared by several sequences, the most that any one of them still needs)."""
        bs, refs = self.block_size, self.pool.ref_counts
        res = [0] * len(self.groups)
        shared: dict[int, tuple[int, int, int]] = {}
        for s in self._seqs.values():
            t = s.tokens
            partial = t % bs
            if partial and s.final_len > t:
                want = s.final_len - t
                for g, table in enumerate(s.tables):
                    block = table[-1]
                    if refs[block] > 1:  # every holder of a shared, partly filled block holds the same tokens
                        prev = shared.get(block)
                        shared[block] = (g, partial, max(want, prev[2] if prev else 0))
                    else:
                        res[g] += min(bs - partial, want)
        for g, partial, want in shared.values():
            res[g] += min(bs - partial, want)
        return res

    def memory_by_group(self) -> tuple[GroupMemory, ...]:
        """Each group's token states, reserved and internal fragmentation (token slots), and window_freed; they sum,
        over the groups, to memory()'s (whose free slots are the pool's)."""
        bs = self.block_size
        reserved = self._reserved_by_group()
        return tuple(
            GroupMemory(
                group=g,
                kind=spec.kind,
                window=spec.window,
                token_states=self._tok[g],
                reserved=reserved[g],
                internal_fragmentation=self._held[g] * bs - self._tok[g] - reserved[g],
                external_fragmentation=0,
                free=0,
                window_freed=len(self._ghost_refs[g]) * bs,
            )
            for g, spec in enumerate(self.groups)
        )

    def _breakdown(self, groups: tuple[GroupMemory, ...]) -> MemoryBreakdown:
        return MemoryBreakdown(
            token_states=sum(m.token_states for m in groups),
            reserved=sum(m.reserved for m in groups),
            internal_fragmentation=sum(m.internal_fragmentation for m in groups),
            external_fragmentation=0,
            free=self.pool.num_free_blocks * self.block_size,
            by_group=groups,
        )

    def memory(self, next_final_len: int | None = None, next_prompt_len: int | None = None) -> MemoryBreakdown:
        return self._breakdown(self.memory_by_group())

    def check(self) -> None:
        bs, n = self.block_size, len(self.groups)
        refs = [0] * self.num_blocks
        ghost_refs: list[Counter] = [Counter() for _ in range(n)]
        logical = 0
        for seq_id, s in self._seqs.items():
            t = s.tokens
            assert 0 <= s.computed <= t, f"sequence {seq_id}: computed {s.computed} of {t} tokens"
            assert len(s.tables) == n and len(s.ghosts) == n, f"sequence {seq_id} has not one table per group"
            for g, (table, ghost) in enumerate(zip(s.tables, s.ghosts, strict=True)):
                assert len(table) == ceil_div(t, bs), (
                    f"sequence {seq_id} group {g}: {t} tokens in {len(table)} table entries"
                )
                skipped = self._skipped_blocks(g, s.computed)
                assert len(ghost) == skipped, (
                    f"sequence {seq_id} group {g}: {len(ghost)} positions given back, the window of "
                    f"{s.computed} computed tokens gives back {skipped}"
                )
                for i, block in enumerate(table):
                    if i < skipped:
                        assert block == NULL_BLOCK, (
                            f"sequence {seq_id} group {g}: block {block} at position {i}, out of the window"
                        )
                        continue
                    assert 0 <= block < self.num_blocks, f"sequence {seq_id} group {g}: block {block} at {i}"
                    refs[block] += 1
                    logical += 1
                    assert self.group_of[block] == g, f"block {block} of group {self.group_of[block]} in group {g}"
                    expected = min(bs, t - i * bs)
                    assert self.fill[block] == expected, (
                        f"block {block} (logical {i} of sequence {seq_id}, group {g}) has {self.fill[block]} tokens, "
                        f"expected {expected}"
                    )
                for x in ghost:
                    ghost_refs[g][x] += 1
            want_keys = t // bs if s.indexed else 0
            assert len(s.hashes) == want_keys, f"sequence {seq_id} has {len(s.hashes)} block keys, not {want_keys}"
        assert refs == self.pool.ref_counts, "reference counts differ from block-table entries"
        free = self.pool.free_block_ids()
        assert sorted(free) == [b for b, r in enumerate(refs) if r == 0], "free queue differs from unreferenced blocks"
        held = [0] * n
        tokens = [0] * n
        for b, r in enumerate(refs):
            if r:
                held[self.group_of[b]] += 1
                tokens[self.group_of[b]] += self.fill[b]
        assert held == self._held, f"held-block counters {self._held}, blocks held {held}"
        assert tokens == self._tok, f"token counters {self._tok}, tokens in held blocks {tokens}"
        assert logical == self._logical, "block-table entry counter is wrong"
        assert ghost_refs == self._ghost_refs, "released-position counters are wrong"
        for block, h in self.pool.block_hash.items():
            assert self.pool.hash_block[h] == block, f"hash index of block {block} is inconsistent"
            assert self.fill[block] == bs, f"registered block {block} is not full"
            assert h[0] == self.group_of[block], f"block {block} of group {self.group_of[block]} indexed as {h[0]}"
        assert len(self.pool.hash_block) == len(self.pool.block_hash), "hash index sizes differ"
        if not self.pool.retain_cached:
            assert not self.pool.cached_free_blocks(), "a free block is still indexed without a prefix cache"
        for b in free:  # a cached block is full; any other free block holds nothing
            want = bs if b in self.pool.block_hash else 0
            assert self.fill[b] == want, f"free block {b} holds {self.fill[b]} tokens, expected {want}"


class HybridPagedPrefixCache(HybridPagedAllocator):
    name = "paged-hybrid-prefix-cache"
    description = "paged-hybrid, and full blocks of every group stay cached (one LRU queue) for prefix reuse"
    retain_cached = True


__all__ = [
    "NULL_BLOCK",
    "GroupMemory",
    "GroupSpec",
    "HybridPagedAllocator",
    "HybridPagedPrefixCache",
    "normalize_groups",
]
