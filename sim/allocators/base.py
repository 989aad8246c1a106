"""The interface every KV-cache allocator implements, and the memory breakdown it reports.

An allocator manages `capacity_tokens` token slots of KV memory (num_blocks x block_size, the same for every
allocator so comparisons are fair). Sequences are identified by integer ids chosen by the caller. Every operation has
a query that says whether it would succeed (`can_admit` -> `admit`, `can_append` -> `append`): the query is honest,
i.e. the operation succeeds exactly when the query said yes, and an operation that cannot succeed raises
`AllocationError` and changes nothing.

Memory is accounted in token slots; multiply by bytes per token for bytes. At any instant every slot is in exactly
one of five categories (see `MemoryBreakdown`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np


@dataclass
class DecodePlan:
    """What `rounds` rounds of pure decode would do, planned without changing the allocator (see plan_decode).

    Round r (1-based) appends one token to every listed sequence, in order. Arrays have one entry per round: the
    memory breakdown (token slots) after that round's appends, and `unshared` (held_without_sharing).
    """

    seq_ids: list[int]
    rounds: int
    token_states: np.ndarray
    reserved: np.ndarray
    internal_fragmentation: np.ndarray
    external_fragmentation: np.ndarray
    free: np.ndarray
    unshared: np.ndarray
    detail: dict = field(default_factory=dict)  # allocator-private data for apply_decode


class BlockDecodePlan(DecodePlan):
    """A DecodePlan of a block allocator in compact form: per round only the reserved slots and the blocks taken so
    far (Python lists); the other figures follow from the counts before the first round. The engine hands it to
    `StepLog.extend_decode`, which turns many stretches into rows with one set of numpy operations (on the ~10-round
    stretches of a real trace, numpy's per-call cost would otherwise dominate). The array fields of DecodePlan are
    computed on demand, with the same integer arithmetic.

    After round r (1-based): token_states = tokens0 + num_seqs * r; held blocks = held0 + new_blocks[r - 1];
    internal fragmentation = held blocks x block_size - token_states - reserved; free = (free0 - new_blocks) x
    block_size; unshared = (logical0 + new_blocks) x block_size; no external fragmentation.
    """

    def __init__(
        self,
        seq_ids: list[int],
        rounds: int,
        block_size: int,
        num_seqs: int,
        tokens0: int,
        held0: int,
        free0: int,
        logical0: int,
        reserved: list[int],
        new_blocks: list[int],
    ):
        self.seq_ids, self.rounds, self.block_size, self.num_seqs = seq_ids, rounds, block_size, num_seqs
        self.tokens0, self.held0, self.free0, self.logical0 = tokens0, held0, free0, logical0
        self.reserved_list, self.new_blocks = reserved, new_blocks
        self.detail = {}

    def _blocks(self) -> np.ndarray:
        import numpy as np

        return np.array(self.new_blocks, dtype=np.int64).reshape(-1)

    @property  # type: ignore[override]
    def token_states(self) -> np.ndarray:
        import numpy as np

        return self.tokens0 + self.num_seqs * np.arange(1, self.rounds + 1, dtype=np.int64)

    @property  # type: ignore[override]
    def reserved(self) -> np.ndarray:
        import numpy as np

        return np.array(self.reserved_list, dtype=np.int64).reshape(-1)

    @property  # type: ignore[override]
    def internal_fragmentation(self) -> np.ndarray:
        return (self.held0 + self._blocks()) * self.block_size - self.token_states - self.reserved

    @property  # type: ignore[override]
    def external_fragmentation(self) -> np.ndarray:
        import numpy as np

        return np.zeros(self.rounds, np.int64)

    @property  # type: ignore[override]
    def free(self) -> np.ndarray:
        return (self.free0 - self._blocks()) * self.block_size

    @property  # type: ignore[override]
    def unshared(self) -> np.ndarray:
        return (self.logical0 + self._blocks()) * self.block_size


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
    """

    token_states: int
    reserved: int
    internal_fragmentation: int
    external_fragmentation: int
    free: int

    @property
    def total(self) -> int:
        return self.token_states + self.reserved + self.internal_fragmentation + self.external_fragmentation + self.free

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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


class KVAllocator(ABC):
    """A KV-cache allocator. Subclass this (or provide the same methods) to plug in your own via
    `--allocator package.module:ClassName`.

    Args:
        num_blocks: blocks of KV memory.
        block_size: tokens per block; capacity is num_blocks x block_size token slots.
        max_model_len: longest sequence the model allows (tokens).
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
    def never_fits(self, final_len: int) -> str | None:
        """Why a sequence of final_len tokens could not be placed even in an empty cache, or None if it could."""

    @abstractmethod
    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        """Whether `admit` would succeed now."""

    @abstractmethod
    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        """Place a new sequence holding num_tokens tokens that will hold final_len tokens when it finishes.

        Returns how many of its first tokens already had their KV in memory (a prefix-cache hit; they need no
        prefill). Allocators without a cache return 0. `content` names the tokens (None: all unique).
        """

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
    def memory(self, next_final_len: int | None = None) -> MemoryBreakdown:
        """The five-way breakdown of capacity, in token slots. next_final_len is the final length of the request at
        the head of the waiting queue (it decides external fragmentation), or None when nothing waits."""

    @abstractmethod
    def check(self) -> None:
        """Assert internal invariants (raise AssertionError). Called after every operation by the property tests."""

    def live_sequences(self) -> list[int]:
        """Ids of live sequences."""
        return list(self._seqs)  # type: ignore[attr-defined]

    #: True when fork() is supported (sequences of one request share blocks).
    supports_fork: ClassVar[bool] = False

    def fork(self, parent_id: int, child_id: int) -> None:
        """Make child_id a new sequence with the same tokens as parent_id (sharing memory where the allocator can;
        a contiguous allocator copies into a reservation of its own)."""
        raise NotImplementedError(f"{type(self).__name__} does not support fork")

    def can_fork(self, parent_id: int, child_id: int) -> bool:
        return False

    def held_without_sharing(self) -> int:
        """Token slots the live sequences would hold if nothing were shared (equal to what is held when nothing is)."""
        m = self.memory()
        return m.token_states + m.reserved + m.internal_fragmentation

    def append_each(self, seq_ids: list[int]) -> int | None:
        """Append one token to each of seq_ids, in order, if every append can succeed without copying a block;
        otherwise change nothing and return None. Returns the total tokens the listed sequences then hold.
        Equivalent to `append(i, 1)` for each i in order; the default declines (the scheduler then appends one by
        one)."""
        return None

    def total_tokens(self, seq_ids: list[int]) -> int:
        """Tokens the listed (distinct, live) sequences hold together."""
        return sum(self.num_tokens(i) for i in seq_ids)

    def append_round(self) -> int | None:
        """Append one token to every live sequence, in live order (the order they were admitted or forked), if every
        append can succeed without copying a block; otherwise change nothing and return None. Returns the total tokens
        the live sequences then hold. The default declines (the scheduler then uses append_each)."""
        return None

    def round_crossers(self) -> list[int] | None:
        """Ids of the live sequences that need a new block in the next round, in live order, when that is all a
        round needs (no copies); None when the allocator cannot tell (the default)."""
        return None

    def plan_decode(self, seq_ids: list[int], max_rounds: int, next_final_len: int | None) -> DecodePlan | None:
        """Plan up to max_rounds rounds of appending one token to each of seq_ids (every live sequence, in the
        scheduler's order), stopping before the first round in which any append would fail or copy a block. Returns
        None when the allocator cannot plan (the engine then runs step by step). Exactness contract: applying the plan
        leaves the allocator exactly as the same appends made one by one would, and the arrays equal what memory()
        and held_without_sharing() would report after each round."""
        return None

    def run_decode(self, seq_ids: list[int], max_rounds: int, next_final_len: int | None) -> DecodePlan | None:
        """plan_decode, then apply_decode of all the planned rounds: returns the plan carried out (its rounds may be
        0), or None when the allocator cannot plan (nothing changes). Allocators may do both in one pass."""
        plan = self.plan_decode(seq_ids, max_rounds, next_final_len)
        if plan is not None and plan.rounds:
            self.apply_decode(plan, plan.rounds)
        return plan

    def apply_decode(self, plan: DecodePlan, rounds: int) -> None:
        """Carry out the first `rounds` rounds of a plan made by plan_decode (no other operation in between)."""
        raise NotImplementedError

    def take_copy_ops(self) -> list[tuple[int, int]]:
        """(source block, destination block) copies recorded since the last call (copy-on-write); none by default."""
        return []
