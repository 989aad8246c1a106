"""Property-based checking of KV allocators: state machines that drive random sequences of operations against any
`KVAllocator` and compare it, after every step, with a model that is obviously right.

Used by the test suite (tests/sim/allocators/test_allocator_properties.py) and by `sim check ALLOCATOR`, so a
researcher's own allocator gets the same invariants for free. The state machines need hypothesis (the `test` extra);
importing this package does not, only `sim.checking.machine` and `sim.checking.runner` do.

Modules:
    invariants: the invariant names, the exception raised for each, and the checks themselves (plain Python).
    model: the obviously-right model (token content tags per position, a simulated physical memory) and the
        independent expectations for the built-in allocator families (paged, contiguous with buddy / first-fit).
    machine: the hypothesis `RuleBasedStateMachine` built for one allocator.
    runner: runs the machines (pytest and `sim check` both call it) and collects violations with shrunk steps.
    mutation: the mutation check (`python -m sim.checking.mutation`): deliberate bugs the suite must catch.
"""

from __future__ import annotations

#: Every invariant the machines check, by the name `sim check` prints, with what it means.
INVARIANTS: dict[str, str] = {
    "self-check": "the allocator's own check() passes",
    "conservation": "the five memory categories are non-negative and sum to capacity (in slots, blocks and bytes); "
    "free slots = capacity - slots held by live sequences",
    "ownership": "no slot is owned twice: block reference counts equal the block-table entries pointing at them, "
    "free blocks are unreferenced, extents are disjoint and in bounds, free buddies are merged",
    "block-table": "a live sequence's block table has exactly ceil(tokens / block_size) entries (an extent holds at "
    "least its tokens)",
    "content": "reading a sequence's tokens through its placement yields exactly the model's content tags; a write "
    "never lands on another live sequence's token; a prefix-cache hit returns the request's own content",
    "honesty": "can_admit / can_append / can_fork say yes exactly when the operation then succeeds; a refused "
    "operation changes nothing; never_fits is None exactly when the request fits an empty cache",
    "capacity": "built-in families only: the allocator admits, grows and places exactly as its policy says "
    "(independent model of free blocks / free extents)",
    "no-leaks": "when every sequence is freed (and caches dropped) every slot is free again",
    "accounting": "token_states, reserved and internal fragmentation equal the model's count of slots; the live "
    "sequences and their token counts equal the model's",
    "decode-plan": "a fast-forward plan (plan_decode / apply_decode) leaves the allocator exactly as the same appends "
    "one by one, and its per-round arrays equal memory() and held_without_sharing() after each round",
    "crash": "no operation raises anything but AllocationError",
}

__all__ = ["INVARIANTS"]
