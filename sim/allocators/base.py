"""The contract every KV-cache allocator implements, and the records it reports.

An allocator manages `capacity_tokens` token slots of KV memory (num_blocks x block_size, the same for every
allocator so comparisons are fair). Sequences are identified by integer ids chosen by the caller. Every operation has
a query that says whether it would succeed (`can_admit` -> `admit`, `can_append` -> `append`): the query is honest,
i.e. the operation succeeds exactly when the query said yes, and an operation that cannot succeed raises
`AllocationError` and changes nothing.

Memory is accounted in token slots; multiply by bytes per token for bytes. At any instant every slot is in exactly
one of five categories (see `MemoryBreakdown`).

This module is the contract only. The optional speed-up hooks (batched appends, lazy decode rounds, fast-forward
plans) are the `FastPaths` protocol in `sim.allocators.fast_paths`; `KVAllocator` inherits their declining defaults,
so an allocator that implements only this contract is complete and exact, just slower to replay.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import ClassVar

from sim.allocators.fast_paths import FastPaths


class AllocationError(RuntimeError):
    """An allocator operation that cannot be carried out (the matching can_* query would have said no)."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """Where every KV slot is, in token slots. The five fields sum to the allocator's capacity.

    token_states: slots holding KV of tokens computed so far.
    reserved: held slots that a live sequence will still fill before it finishes.
    internal_fragmentation: held slots that will never hold a token (reservation beyond the final length, the unused
        tail of a last block).
    external_fragmentation: free slots the next waiting request cannot use because no free extent is large enough for
        it (0 when nothing waits, and always 0 for paged allocators, whose blocks are interchangeable).
    free: the other free slots.
    by_group: for an allocator with KV-cache groups (`sim.allocators.hybrid`), each group's figures (GroupMemory, in
        group order; the steps log records them); empty otherwise. Not part of equality.
    """

    token_states: int
    reserved: int
    internal_fragmentation: int
    external_fragmentation: int
    free: int
    by_group: tuple = field(default=(), compare=False)

    @property
    def total(self) -> int:
        return self.token_states + self.reserved + self.internal_fragmentation + self.external_fragmentation + self.free

    def as_dict(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in MEMORY_CATEGORIES}


MEMORY_CATEGORIES = ("token_states", "reserved", "internal_fragmentation", "external_fragmentation", "free")


@dataclass(frozen=True)
class BlockTablePlacement:
    """Where a paged sequence's KV lives: physical block ids in logical order."""

    block_size: int
    block_table: tuple[int, ...]

    def slot(self, position: int) -> int:
        """Token slot address of the token at `position` (block * block_size + offset)."""
        return self.block_table[position // self.block_size] * self.block_size + position % self.block_size


@dataclass(frozen=True)
class ExtentPlacement:
    """Where a contiguous sequence's KV lives: `length` token slots from `start` in one linear address space."""

    start: int
    length: int

    def slot(self, position: int) -> int:
        if not 0 <= position < self.length:
            raise IndexError(f"position {position} outside the reservation of {self.length} slots")
        return self.start + position


@dataclass(frozen=True)
class TokenContent:
    """What a sequence's tokens are, for sharing and prefix caching: consecutive runs of (tag, length). Token k of a
    run tagged t has identity (t, k); two tokens are equal content exactly when their identities are equal. Tokens
    beyond the last run are unique to the sequence. Example: a request of prefix group 7 with a 100-token shared
    prefix is ((("group", 7), 100),).
    """

    runs: tuple[tuple[Hashable, int], ...] = ()


class KVAllocator(FastPaths, ABC):
    """A KV-cache allocator. Subclass this (or provide the same methods) to plug in your own via
    `--allocator package.module:ClassName`.

    Args:
        num_blocks: blocks of KV memory.
        block_size: tokens per block; capacity is num_blocks x block_size token slots.
        max_model_len: longest sequence the model allows (tokens).

    Required: the ten abstract methods below (`sim.allocators.resolve_allocator` checks that a user's class has
    them). With defaults here: `live_sequences`, sharing (`supports_fork`, `can_fork`, `fork`, `take_copy_ops`,
    `num_cow_copies`), `held_without_sharing` and the summary attributes `name`, `description`, `grows_on_demand`,
    `address_space_name`. Everything else an allocator may offer is either a fast path (`FastPaths`, inherited with
    declining defaults) or optional inspection that `sim.checking` reads where present:

    - `pool`: an object with `ref_counts` (a list, one entry per block) and `free_block_ids()` (free blocks in
      eviction order); the checker compares them with the block tables.
    - `num_free_blocks` (int): free blocks; the checker compares it with `memory()`.
    - `cache_block_refs()` -> {block: count}: references a prefix cache holds outside any block table.
    - `drop_cache()` (or `reset_prefix_cache()` / `clear_cache()`): forget cached content of free blocks.
    - `sharing` (bool): whether forks and shared prefixes share memory (default: `supports_fork`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True when sequences may need more memory after admission (and so may be preempted).
    grows_on_demand: ClassVar[bool] = False

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.capacity_tokens = num_blocks * block_size

    # --- admission and growth -------------------------------------------------------------------------------------
    @abstractmethod
    def never_fits(self, final_len: int, prompt_len: int | None = None) -> str | None:
        """Why a sequence of final_len tokens, prompt_len of them prefilled at admission (None: unknown), could not
        be placed even in an empty cache, or None if it could."""

    @abstractmethod
    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        """Whether `admit` would succeed now."""

    @abstractmethod
    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        """Place a new sequence holding num_tokens tokens that will hold final_len tokens when it finishes.

        Returns how many of its first tokens already had their KV in memory (a prefix-cache hit; they need no
        prefill). Allocators without a cache return 0. `content` names the tokens (None: all unique).
        """

    def prefix_hit_tokens(self, seq_id: int, num_tokens: int, content: TokenContent | None = None) -> int:
        """Tokens `admit` would find in the prefix cache for a new sequence of num_tokens tokens (at least one token
        is left to compute), without admitting it: a scheduler that admits a prompt in chunks asks first. Allocators
        without a cache find none."""
        return 0

    @abstractmethod
    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        """Whether `append` would succeed now."""

    @abstractmethod
    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        """Make room for num_tokens more tokens of a live sequence."""

    @abstractmethod
    def free(self, seq_id: int) -> None:
        """Release everything a sequence holds (completion or preemption)."""

    # --- inspection -----------------------------------------------------------------------------------------------
    @abstractmethod
    def num_tokens(self, seq_id: int) -> int:
        """Tokens a live sequence holds."""

    @abstractmethod
    def placement(self, seq_id: int) -> BlockTablePlacement | ExtentPlacement:
        """Where a live sequence's KV lives."""

    @abstractmethod
    def memory(self, next_final_len: int | None = None, next_prompt_len: int | None = None) -> MemoryBreakdown:
        """The five-way breakdown of capacity, in token slots. next_final_len is the final length of the request at
        the head of the waiting queue (it decides external fragmentation), or None when nothing waits;
        next_prompt_len the tokens it prefills at admission (None: unknown)."""

    @abstractmethod
    def check(self) -> None:
        """Assert internal invariants (raise AssertionError). Called after every operation by the property tests."""

    def live_sequences(self) -> list[int]:
        """Ids of live sequences. The default reads `self._seqs` (a dict keyed by id); override it otherwise."""
        return list(self._seqs)  # type: ignore[attr-defined]

    # --- sharing (optional: the defaults share nothing) -------------------------------------------------------------
    #: True when fork() is supported (sequences of one request share blocks).
    supports_fork: ClassVar[bool] = False
    #: Copy-on-write block copies made so far (a summary figure; stays 0 where nothing is shared).
    num_cow_copies: int = 0
    #: The address-space policy placing extents ("buddy", "first-fit"), for allocators that have one; None otherwise.
    address_space_name: str | None = None

    def fork(self, parent_id: int, child_id: int) -> None:
        """Make child_id a new sequence with the same tokens as parent_id (sharing memory where the allocator can;
        a contiguous allocator copies into a reservation of its own)."""
        raise NotImplementedError(f"{type(self).__name__} does not support fork")

    def can_fork(self, parent_id: int, child_id: int) -> bool:
        """Whether `fork` would succeed now."""
        return False

    def take_copy_ops(self) -> list[tuple[int, int]]:
        """(source block, destination block) copies recorded since the last call (copy-on-write); none by default.
        The executor must carry them out before the next step reads the destination blocks."""
        return []

    def take_transfers(self) -> list:
        """Host-link copies recorded since the last call (`sim.allocators.host_tier.Transfer`); none without a host
        tier. The executor must carry them out, in order, before the next step."""
        return []

    def drop_transfers(self, transfers: list) -> None:
        """Copies `take_transfers` gave that will never run (the replay ended first): no longer counted."""

    def held_without_sharing(self) -> int:
        """Token slots the live sequences would hold if nothing were shared (equal to what is held when nothing is).
        The step log reports it; the default derives it from memory(), which is right for any allocator that does
        not share."""
        m = self.memory()
        return m.token_states + m.reserved + m.internal_fragmentation
