"""Contiguous reservations: each sequence holds one extent of token slots, reserved up front for its whole life.

These are the baselines of the vLLM paper (Orca Max / Pow2 / Oracle). A sequence never grows beyond its reservation,
so these allocators never preempt. They cannot share memory between sequences: every sequence stores its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.allocators.address_space import ADDRESS_SPACES, AddressSpace
from sim.allocators.base import AllocationError, ExtentPlacement, KVAllocator, MemoryBreakdown, TokenContent
from sim.allocators.fast_paths import DecodePlan
from sim.units import next_power_of_two


@dataclass
class _Extent:
    start: int
    held: int  # slots held (after the address-space policy's rounding)
    tokens: int
    final_len: int
    prompt_len: int  # tokens prefilled at admission (a fork keeps its parent's): what Pow2 sizes the output from


class ContiguousAllocator(KVAllocator):
    """Base for the contiguous allocators; subclasses say how much each sequence reserves.

    Args:
        address_space: "buddy" (default) or "first-fit": the policy that places extents in the address space.
    """

    address_space_policy: ClassVar[str] = "buddy"

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int, address_space: str | None = None):
        super().__init__(num_blocks, block_size, max_model_len)
        policy = address_space or self.address_space_policy
        if policy not in ADDRESS_SPACES:
            raise ValueError(f"unknown address space {policy!r}; choose from {', '.join(ADDRESS_SPACES)}")
        self.address_space_name = policy
        self.space: AddressSpace = ADDRESS_SPACES[policy](self.capacity_tokens)
        self._seqs: dict[int, _Extent] = {}
        self._tokens = 0  # token_states, summed over sequences
        self._held = 0
        self._unfilled = 0  # sum of (final_len - tokens): slots still to be filled

    def reservation(self, final_len: int, prompt_len: int | None = None) -> int:
        """Slots a sequence of final_len tokens, prompt_len of them prefilled at admission, asks for (before the
        address-space policy rounds it). prompt_len None means unknown: taken as final_len (no output to come)."""
        raise NotImplementedError

    def never_fits(self, final_len: int, prompt_len: int | None = None) -> str | None:
        need = self.space.placed_size(self.reservation(final_len, prompt_len))
        largest = self.space.largest_placeable()
        if need > largest:
            return (
                f"needs a contiguous reservation of {need:,} token slots; the largest the KV cache can place "
                f"is {largest:,}"
            )
        return None

    def can_admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> bool:
        return self._can_place(seq_id, num_tokens, final_len, num_tokens)

    def _can_place(self, seq_id: int, num_tokens: int, final_len: int, prompt_len: int) -> bool:
        size = self.reservation(final_len, prompt_len)
        return (
            seq_id not in self._seqs
            and 0 <= num_tokens <= final_len
            and num_tokens <= self.space.placed_size(size)
            and self.space.can_alloc(size)
        )

    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None = None) -> int:
        """The num_tokens tokens placed at admission are the sequence's prompt (for Pow2's output reservation)."""
        return self._place(seq_id, num_tokens, final_len, num_tokens)

    def _place(self, seq_id: int, num_tokens: int, final_len: int, prompt_len: int) -> int:
        if not self._can_place(seq_id, num_tokens, final_len, prompt_len):
            raise AllocationError(f"cannot admit sequence {seq_id} ({num_tokens} tokens, final {final_len})")
        size = self.reservation(final_len, prompt_len)
        start = self.space.alloc(size)
        held = self.space.placed_size(size)
        self._seqs[seq_id] = _Extent(start, held, num_tokens, final_len, prompt_len)
        self._tokens += num_tokens
        self._held += held
        self._unfilled += final_len - num_tokens
        return 0

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        ext = self._seqs.get(seq_id)
        return ext is not None and num_tokens >= 0 and ext.tokens + num_tokens <= ext.held

    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        if not self.can_append(seq_id, num_tokens):
            raise AllocationError(f"sequence {seq_id} cannot grow by {num_tokens} beyond its reservation")
        ext = self._seqs[seq_id]
        old_unfilled = max(0, ext.final_len - ext.tokens)
        ext.tokens += num_tokens
        self._tokens += num_tokens
        self._unfilled += max(0, ext.final_len - ext.tokens) - old_unfilled

    def append_each(self, seq_ids: list[int]) -> int | None:
        seqs = self._seqs
        try:
            listed = [seqs[i] for i in seq_ids]
        except KeyError:
            return None
        if any(e.tokens >= e.held for e in listed):
            return None
        total = unfilled_drop = 0
        for e in listed:
            if e.final_len > e.tokens:
                unfilled_drop += 1
            e.tokens += 1
            total += e.tokens
        self._tokens += len(listed)
        self._unfilled -= unfilled_drop
        return total

    def free(self, seq_id: int) -> None:
        ext = self._seqs.pop(seq_id, None)
        if ext is None:
            raise AllocationError(f"sequence {seq_id} is not live")
        self.space.release(ext.start)
        self._tokens -= ext.tokens
        self._held -= ext.held
        self._unfilled -= max(0, ext.final_len - ext.tokens)

    supports_fork = True

    @staticmethod
    def _child_final_len(parent: _Extent) -> int:
        # A parent may have grown past its final length (up to its reservation); the child must hold all its tokens.
        return max(parent.final_len, parent.tokens)

    def can_fork(self, parent_id: int, child_id: int) -> bool:
        parent = self._seqs.get(parent_id)
        return parent is not None and self._can_place(
            child_id, parent.tokens, self._child_final_len(parent), parent.prompt_len
        )

    def fork(self, parent_id: int, child_id: int) -> None:
        """A contiguous allocator cannot share: the child gets its own reservation (sized from the parent's prompt)
        and a copy of the parent's KV."""
        if not self.can_fork(parent_id, child_id):
            raise AllocationError(f"cannot fork sequence {parent_id} into {child_id}")
        parent = self._seqs[parent_id]
        self._place(child_id, parent.tokens, self._child_final_len(parent), parent.prompt_len)

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].tokens

    def placement(self, seq_id: int) -> ExtentPlacement:
        ext = self._seqs[seq_id]
        return ExtentPlacement(ext.start, ext.held)

    def memory(self, next_final_len: int | None = None, next_prompt_len: int | None = None) -> MemoryBreakdown:
        free = self.space.num_free()
        external = (
            0 if next_final_len is None else self.space.unusable_free(self.reservation(next_final_len, next_prompt_len))
        )
        return MemoryBreakdown(
            token_states=self._tokens,
            reserved=self._unfilled,
            internal_fragmentation=self._held - self._tokens - self._unfilled,
            external_fragmentation=external,
            free=free - external,
        )

    def check(self) -> None:
        self.space.check()
        extents = sorted((e.start, e.held) for e in self._seqs.values())
        assert extents == self.space.allocated_extents(), "sequence extents differ from the address space's"
        for seq_id, e in self._seqs.items():
            assert 0 <= e.tokens <= e.held, f"sequence {seq_id} holds {e.tokens} tokens in {e.held} slots"
            assert e.start >= 0 and e.start + e.held <= self.capacity_tokens, f"sequence {seq_id} out of bounds"
        assert self._tokens == sum(e.tokens for e in self._seqs.values()), "token counter is wrong"
        assert self._held == sum(e.held for e in self._seqs.values()), "held counter is wrong"
        assert self._unfilled == sum(max(0, e.final_len - e.tokens) for e in self._seqs.values())
        assert self._held + self.space.num_free() == self.capacity_tokens, "held + free != capacity"

    def plan_decode(
        self, seq_ids: list[int], max_rounds: int, next_final_len: int | None, next_prompt_len: int | None = None
    ) -> DecodePlan | None:
        """Reservations never change during decode: only token counts move (exact, see KVAllocator.plan_decode)."""
        if max_rounds <= 0 or len(seq_ids) != len(self._seqs):
            return None
        exts = [self._seqs.get(i) for i in seq_ids]
        if any(e is None for e in exts):
            return None
        n = len(exts)
        room = min(e.held - e.tokens for e in exts)
        rounds = max(0, min(max_rounds, room))
        r = np.arange(1, rounds + 1, dtype=np.int64)
        t = np.fromiter((e.tokens for e in exts), np.int64, n)
        final = np.fromiter((e.final_len for e in exts), np.int64, n)
        unfilled = np.maximum(final[:, None] - (t[:, None] + r[None, :]), 0).sum(axis=0)
        tokens = self._tokens + n * r
        base = self.memory(next_final_len, next_prompt_len)
        ones = np.ones(rounds, dtype=np.int64)
        return DecodePlan(
            seq_ids=list(seq_ids),
            rounds=rounds,
            token_states=tokens,
            reserved=unfilled,
            internal_fragmentation=self._held - tokens - unfilled,
            external_fragmentation=base.external_fragmentation * ones,
            free=base.free * ones,
            unshared=self._held * ones,
        )

    def apply_decode(self, plan: DecodePlan, rounds: int) -> None:
        if not 0 <= rounds <= plan.rounds:
            raise AllocationError(f"cannot apply {rounds} rounds of a {plan.rounds}-round plan")
        for seq_id in plan.seq_ids:
            e = self._seqs[seq_id]
            self._unfilled += max(0, e.final_len - e.tokens - rounds) - max(0, e.final_len - e.tokens)
            e.tokens += rounds
        self._tokens += len(plan.seq_ids) * rounds


class ContiguousMax(ContiguousAllocator):
    name = "contiguous-max"
    description = "reserves max-model-length slots per sequence (FasterTransformer / Orca 'Max')"

    def reservation(self, final_len: int, prompt_len: int | None = None) -> int:
        return max(self.max_model_len, final_len)


class ContiguousPow2(ContiguousAllocator):
    """Orca 'Pow2' as the vLLM paper (Kwon et al., SOSP 2023, section 6.1) defines it: the prompt plus the next power
    of two >= the output length ("if the true output length is 25, it reserves 32 positions for outputs"), so the
    space for outputs is over-reserved by at most 2x. The output length of a sequence of final_len KV tokens whose
    first prompt_len tokens are prefilled at admission is final_len - prompt_len + 1 (the last output token's KV is
    never written; see README "How a replay works")."""

    name = "contiguous-pow2"
    description = "reserves the prompt + the next power of two >= the output length (Orca 'Pow2', vLLM paper)"

    def reservation(self, final_len: int, prompt_len: int | None = None) -> int:
        prompt = final_len if prompt_len is None else max(0, min(prompt_len, final_len))
        return prompt + next_power_of_two(final_len - prompt + 1)


class ContiguousOracle(ContiguousAllocator):
    name = "contiguous-oracle"
    description = "reserves exactly the final length, known up front (Orca 'Oracle')"

    def reservation(self, final_len: int, prompt_len: int | None = None) -> int:
        return max(1, final_len)
