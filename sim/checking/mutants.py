"""The mutation check's catalogue: each mutant a deliberate, realistic bug in the allocators, the scheduler, the engine
or the records, located by syntax tree (see `sim.checking.mutation` for how `function`, `old` and `new` are read)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    function: str  # qualified name, or a dotted suffix of it, of the function holding the node
    old: str  # expression or statement to find (by syntax tree); `...` matches any expression
    new: str  # replacement source; {0}, {1}, ... are the sources matched by the `...` of old, in order
    description: str


MUTANTS: list[Mutant] = [
    # --- contiguous allocators ---------------------------------------------------------------------------------
    Mutant(
        "contiguous-free-keeps-tokens",
        "ContiguousAllocator.free",
        "self._tokens -= ...",
        "pass",
        "free() forgets to subtract the sequence's tokens from the token counter",
    ),
    Mutant(
        "contiguous-append-off-by-one",
        "ContiguousAllocator.can_append",
        "... + ... <= ...",
        "{0} + {1} <= {2} + 1",
        "can_append lets a sequence grow one token past its reservation",
    ),
    Mutant(
        "pow2-reservation-off-by-one",
        "ContiguousPow2.reservation",
        "next_power_of_two(...)",
        "next_power_of_two({0} - 1)",
        "Pow2 sizes its output reservation from one token fewer (one power of two short at 2^k + 1 outputs)",
    ),
    # --- buddy address space ---------------------------------------------------------------------------------------
    Mutant(
        "buddy-merge-wrong-neighbour",
        "BuddySpace.release",
        "... ^ (1 << ...)",
        "{0} + (1 << {1})",
        "a freed block looks for its buddy above it, also when the buddy lies below",
    ),
    Mutant(
        "buddy-split-frees-kept-half",
        "BuddySpace.alloc",
        "(...).add(... + (1 << ...))",
        "{0}.add({1})",
        "splitting frees the half it hands out instead of the upper buddy",
    ),
    Mutant(
        "buddy-can-alloc-too-strict",
        "BuddySpace.can_alloc",
        "... >= ...",
        "{0} > {1}",
        "can_alloc ignores free blocks of exactly the needed order",
    ),
    Mutant(
        "buddy-alloc-largest-block",
        "BuddySpace.alloc",
        "min(candidates)",
        "max(candidates)",
        "alloc splits the largest free block instead of the smallest that fits (worst fit)",
    ),
    Mutant(
        "buddy-unusable-counts-fitting-blocks",
        "BuddySpace.unusable_free",
        "... < ...",
        "{0} <= {1}",
        "external fragmentation counts free blocks that exactly fit the waiting request as unusable",
    ),
    # --- first-fit address space -------------------------------------------------------------------------------------
    Mutant(
        "first-fit-no-merge-with-next",
        "FirstFitSpace.release",
        "... < len(...) and ... == ...",
        "False and {0} < len({1}) and {2} == {3}",
        "release never coalesces with the following free extent",
    ),
    Mutant(
        "first-fit-skips-exact-fit",
        "FirstFitSpace.alloc",
        "... >= ...",
        "{0} > {1}",
        "alloc skips an extent of exactly the needed size (can_alloc still counts it)",
    ),
    # --- paged: blocks, reference counts, copy-on-write, prefix cache, fast-forward -------------------------------
    Mutant(
        "paged-admit-ignores-last-block",
        "PagedAllocator._admit_need",
        "ceil_div(..., ...) - len(...) + ...",
        "{0} // {1} - len({2}) + {3}",
        "the admission check counts whole blocks only, ignoring the partly filled last block",
    ),
    Mutant(
        "paged-free-missed-decref",
        "BlockPool.release_many",
        "...[...] = ...",
        "{0}[{1}] = {2} if {2} == 0 else {2} + 1",
        "free() of a sequence sharing a block forgets to drop its reference",
    ),
    Mutant(
        "paged-cow-without-copy",
        "PagedAllocator.append",
        "self._copies.append(...)",
        "pass",
        "copy-on-write takes a private block but records no copy (its KV is never copied)",
    ),
    Mutant(
        "paged-no-cow-on-shared-tail",
        "PagedAllocator._append_need",
        "(...).ref_counts[...] > 1",
        "{0}.ref_counts[{1}] > 2",
        "a block shared by exactly two sequences is written in place (no copy-on-write)",
    ),
    Mutant(
        "pool-decref-frees-shared-block",
        "BlockPool.decref",
        "...[...] -= 1",
        "{0}[{1}] = 0",
        "dropping one reference frees a shared block",
    ),
    Mutant(
        "prefix-key-covers-partial-block",
        "chain_key",
        "... == 0 and ... >= (... + 1) * ...",
        "{0} == 0 and {1} > {2} * {3}",
        "a block only partly inside the leading run is keyed by that run alone: its other tokens match anything",
    ),
    Mutant(
        "prefix-cache-eviction-keeps-index",
        "BlockPool.allocate",
        "del (...).hash_block[...]",
        "pass",
        "evicting a cached block leaves its hash pointing at the block, which is rewritten",
    ),
    Mutant(
        "prefix-cache-bulk-eviction-keeps-index",
        "BlockPool.allocate_many",
        "del ...[...]",
        "pass",
        "taking many blocks at once (an admission) leaves evicted blocks' hashes pointing at them",
    ),
    Mutant(
        "paged-plan-one-round-too-many",
        "PagedAllocator.plan_decode",
        'int((...).searchsorted(..., ..., side="right"))',
        'min(max_rounds, int({0}.searchsorted({1}, {2}, side="right")) + 1)',
        "fast-forward plans one decode round more than the free blocks allow",
    ),
    Mutant(
        "paged-run-decode-one-round-too-many",
        "PagedAllocator._advance_rounds",
        "... + len(...) > ...",
        "{0} > {2}",
        "plan-and-apply in one pass (run_decode, with the prefix cache) goes one round past the free blocks",
    ),
    Mutant(
        "paged-plain-rounds-one-round-too-many",
        "PagedAllocator._recorded_plain_rounds",
        "... + len(...) > ...",
        "{0} > {2}",
        "run_decode's own loop for plain rounds goes one round past the free blocks",
    ),
    Mutant(
        "lazy-round-reserved-not-falling",
        "PagedAllocator._advance_rounds",
        "res_sum -= res_pos",
        "pass",
        "a lazy decode round forgets that every reserving sequence fills one reserved slot",
    ),
    Mutant(
        "plain-rounds-reserved-not-falling",
        "PagedAllocator._recorded_plain_rounds",
        "res_sum -= res_pos",
        "pass",
        "in run_decode's own loop for plain rounds, reserving sequences do not fill their reserved slots",
    ),
    # --- engine and records ----------------------------------------------------------------------------------------
    Mutant(
        "stretch-finish-one-iteration-early",
        "Engine._stretch",
        "finish_s[...] = ends[...]",
        "finish_s[{0}] = ends[{1} - 1]",
        "requests finishing at the end of a fast-forwarded stretch get the start of its last iteration as finish time",
    ),
    Mutant(
        "decode-rows-free-one-block-high",
        "StepLog._decode_rows",
        "(free0 - ...) * ...",
        "(free0 - {0} + 1) * {1}",
        "the rows of fast-forwarded stretches built many at a time count one block too many as free",
    ),
    # --- scheduler ---------------------------------------------------------------------------------------------------
    Mutant(
        "scheduler-emits-one-token-too-many",
        "VllmV0Scheduler._start_running",
        "self.round + (...).output_tokens - (...).generated",
        "self.round + {0}.output_tokens - {1}.generated + 1",
        "a running request finishes one token late",
    ),
    Mutant(
        "scheduler-ignores-max-num-seqs",
        "VllmV0Scheduler._admit",
        "self.num_running_seqs + (...).num_branches > self.limits.max_num_seqs",
        "self.num_running_seqs > self.limits.max_num_seqs",
        "admission forgets the new request's own sequences when checking max_num_seqs",
    ),
]
