"""The optional speed-up hooks of a KV allocator (`FastPaths`), and the fast-forward plans they return.

Every hook is a shortcut for calls of the contract in `sim.allocators.base`: it must leave the allocator, and return
figures, exactly as those step-by-step calls would, or decline (return None and change nothing). The scheduler and the
engine call the hooks; when one declines they fall back to the contract, so a hook changes speed, never a figure.

`KVAllocator` inherits this protocol, whose method bodies are the declining (or contract-derived) defaults, so an
allocator implements only the hooks it can make faster. The allocator property machine (`sim.checking.machine`, run
for every registered allocator by tests/sim/allocators/test_allocator_properties.py::test_allocator_invariants) has
one rule per hook that compares it with the contract calls on a copy of the allocator after random operations. The
engine tests test_fast_forward_equals_step_by_step in tests/sim/serving/test_fast_forward.py and
tests/sim/serving/test_engine_properties.py compare whole replays with and without the hooks (`fast_forward=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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


class FastPaths(Protocol):
    """The optional speed-up hooks. Signatures are fixed: the scheduler (sim.serving.schedulers) and the engine
    (sim.serving.engine) call them by these names. Each docstring says what the hook returns, which contract calls it
    must equal, and the test that proves it for the built-in allocators.

    Besides the methods, an allocator whose `round_crossers` returns a list must expose `num_free_blocks` (int, free
    blocks now): the scheduler preempts against it before a round.
    """

    def append_each(self, seq_ids: list[int]) -> int | None:
        """Append one token to each of seq_ids, in order, if every append can succeed without copying a block;
        otherwise change nothing and return None. Returns the total tokens the listed sequences then hold.

        Must equal: `append(i, 1)` for each i in order, then `sum(num_tokens(i))`. Default: declines (the scheduler
        then appends one by one). Proof: the `append_each` rule of the property machine (test_allocator_invariants)
        and tests/sim/serving/test_fast_forward.py::test_append_each_equals_appending_one_by_one."""
        return None

    def total_tokens(self, seq_ids: list[int]) -> int:
        """Tokens the listed (distinct, live) sequences hold together.

        Must equal: `sum(num_tokens(i) for i in seq_ids)`, which is the default. Proof: the batched-append rules of
        the property machine (test_allocator_invariants) compare it after every `append_each` / `append_round`."""
        return sum(self.num_tokens(i) for i in seq_ids)  # type: ignore[attr-defined]

    def append_round(self) -> int | None:
        """Append one token to every live sequence, in live order (the order they were admitted or forked), if every
        append can succeed without copying a block; otherwise change nothing and return None. Returns the total
        tokens the live sequences then hold.

        Must equal: `append(i, 1)` for each i of `live_sequences()` in order. Default: declines (the scheduler then
        uses append_each). Proof: the `append_round` rule of the property machine (test_allocator_invariants)."""
        return None

    def round_crossers(self) -> list[int] | None:
        """Ids of the live sequences that need a new block in the next round, in live order, when that is all a
        round needs (no copies); None when the allocator cannot tell (the default).

        Must equal: the live sequences, in live order, for which `blocks_needed_to_append(i, 1)` is non-zero. Proof:
        the `append_round` rule of the property machine (test_allocator_invariants)."""
        return None

    def blocks_needed_to_append(self, seq_id: int, num_tokens: int = 1) -> int:
        """Blocks `append(seq_id, num_tokens)` would take now (a copy-on-write copy included). Required where
        `round_crossers` returns a list: the property machine checks the crossers against it."""
        raise NotImplementedError(f"{type(self).__name__} does not count blocks per append")

    def plan_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        """Plan up to max_rounds rounds of appending one token to each of seq_ids (every live sequence, in the
        scheduler's order), stopping before the first round in which any append would fail or copy a block. Returns
        None when the allocator cannot plan (the default; the engine then runs step by step).

        Must equal: applying the plan leaves the allocator exactly as the same appends made one by one would, and
        the plan's arrays equal what memory(next_final_len, next_prompt_len) and held_without_sharing() report
        after each round.
        Proof: the `decode_rounds` rule of the property machine (test_allocator_invariants)."""
        return None

    def apply_decode(self, plan: DecodePlan, rounds: int) -> None:
        """Carry out the first `rounds` rounds of a plan made by plan_decode (no other operation in between).

        Must equal: the plan's appends one by one, round by round. Proof: the `decode_rounds` rule of the property
        machine (test_allocator_invariants) applies a random number of rounds and compares with a copy."""
        raise NotImplementedError(f"{type(self).__name__} makes no decode plans")

    def run_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        """plan_decode, then apply_decode of all the planned rounds: returns the plan carried out (its rounds may be
        0), or None when the allocator cannot plan (nothing changes). Allocators may do both in one pass.

        Must equal: plan_decode then apply_decode (the default), figure for figure. Proof: the `run_decode` rule of
        the property machine (test_allocator_invariants), and the engine tests named in the module docstring, which
        replay whole traces with the engine's fast-forward (this hook) and without it."""
        plan = self.plan_decode(seq_ids, max_rounds, next_final_len, next_prompt_len)
        if plan is not None and plan.rounds:
            self.apply_decode(plan, plan.rounds)
        return plan
