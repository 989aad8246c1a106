"""The hybrid paged allocator (sim.allocators.hybrid), worked out by hand where generated mutants showed it untested:
its flags and constants, the default block table, check()'s assertions (each by corrupting one piece of the state on
purpose), windows, prefix hits, forks and fast-forward at their boundaries.

Unless said otherwise: 16 blocks of 4 slots; group 0 slides over W = 4 tokens, group 1 is full. A sequence that has
computed c tokens has max(0, c - W + 1) // 4 = max(0, c - 3) // 4 leading sliding blocks out of its window.
"""

from __future__ import annotations

import pytest

from sim.allocators.base import AllocationError, TokenContent
from sim.allocators.hybrid import (
    NULL_BLOCK,
    GroupMemory,
    GroupSpec,
    HybridPagedAllocator,
    HybridPagedPrefixCache,
)
from sim.checking import generic_mutation
from sim.hardware.kv_groups import FULL, MLA, SLIDING_WINDOW

SW4 = GroupSpec(SLIDING_WINDOW, 4)
FULL_G = GroupSpec(FULL)
G = ("group", 1)


def _hybrid(cls=HybridPagedAllocator, groups=(SW4, FULL_G), num_blocks=16, **kw):
    return cls(num_blocks, 4, 64, groups=groups, **kw)


def _one() -> HybridPagedAllocator:
    """Sequence 1 at 11 tokens, computed 10, one sliding block given back.

    admit(1, 6, 20): 2 blocks per group, sliding first: g0 = [0, 1] (fills 4, 2), g1 = [2, 3] (4, 2).
    append(1, 4): computed 6 -> max(0, 6 - 3) // 4 = 0 given back; positions 6, 7 fill blocks 1 and 3, positions 8, 9
    go into a new block per group: g0 takes 4, g1 takes 5 (fill 2 each).
    append(1, 1): computed 10 -> 7 // 4 = 1: g0 gives back block 0 (free again, at the end of the queue), position 10
    fills blocks 4 and 5 to 3.
    """
    a = _hybrid()
    a.admit(1, 6, 20)
    a.append(1, 4)
    a.append(1, 1)
    return a


# --- the wiring of the mutation check ---------------------------------------------------------------------------------


def test_the_mutation_check_runs_these_tests_and_the_hybrid_machines_against_hybrid_mutants():
    units = [
        "tests/sim/allocators/test_allocators.py",
        "tests/sim/allocators/test_hybrid.py",
        "tests/sim/allocators/test_mutant_kills_hybrid.py",
    ]
    props = ["p.py::t[paged]", "p.py::t[paged-hybrid]", "e.py::t[paged-hybrid-prefix-cache]", "p.py::t[contiguous-max]"]
    assert generic_mutation.selection("sim/allocators/hybrid.py", units, props) == [
        "tests/sim/allocators/test_mutant_kills_hybrid.py",
        "tests/sim/allocators/test_hybrid.py",
        "p.py::t[paged-hybrid]",
        "e.py::t[paged-hybrid-prefix-cache]",
    ]


# --- flags, constants, defaults ---------------------------------------------------------------------------------------


def test_names_flags_and_the_placeholder():
    assert (HybridPagedAllocator.name, HybridPagedPrefixCache.name) == ("paged-hybrid", "paged-hybrid-prefix-cache")
    assert "sliding" in HybridPagedAllocator.description
    assert "cached" in HybridPagedPrefixCache.description
    assert HybridPagedAllocator.grows_on_demand is True and HybridPagedAllocator.supports_fork is True
    assert HybridPagedAllocator.uses_kv_groups is True and HybridPagedPrefixCache.uses_kv_groups is True
    assert (HybridPagedAllocator.retain_cached, HybridPagedPrefixCache.retain_cached) == (False, True)
    # the placeholder is -1 in the block tables handed out (never a pool block id 0..num_blocks - 1)
    assert NULL_BLOCK == -1
    a = _one()
    assert a.block_tables(1) == ((-1, 1, 4), (2, 3, 5))
    assert a.placement(1, 0).block_table == (-1, 1, 4)


def test_the_primary_group_is_the_first_full_group_else_group_0():
    # full/MLA groups 1 and 3: the first one, 1
    a = _hybrid(groups=(SW4, FULL_G, SW4, GroupSpec(MLA)))
    assert a.primary_group == 1
    # only sliding groups: group 0
    b = _hybrid(groups=(SW4, GroupSpec(SLIDING_WINDOW, 8)))
    assert b.primary_group == 0
    b.admit(1, 5, 8)  # 2 blocks per group: g0 takes 0, 1; g1 takes 2, 3
    assert b.placement(1).block_table == (0, 1)
    assert b.placement(1, 1).block_table == (2, 3)


def test_group_memory_as_dict_and_held():
    m = GroupMemory(
        group=1,
        kind=SLIDING_WINDOW,
        window=4,
        token_states=7,
        reserved=2,
        internal_fragmentation=3,
        external_fragmentation=0,
        free=0,
        window_freed=8,
    )
    assert m.held == 7 + 2 + 3
    assert m.as_dict() == {
        "group": 1,
        "kind": SLIDING_WINDOW,
        "window": 4,
        "token_states": 7,
        "reserved": 2,
        "internal_fragmentation": 3,
        "external_fragmentation": 0,
        "free": 0,
        "window_freed": 8,
    }


def test_the_state_of_the_example_by_hand():
    a = _one()
    assert a.num_tokens(1) == 11
    assert a.fill[:6] == [0, 4, 4, 4, 3, 3]
    assert a.group_of == [0, 0, 1, 1, 0, 1] + [-1] * 10  # blocks 6..15 were never taken
    assert a.pool.free_block_ids() == [*range(6, 16), 0]
    # g0 holds blocks 1, 4 (7 tokens; positions 11..19 still to come: 1 reserved slot in block 4); g1 holds 2, 3, 5
    # (11 tokens, 1 reserved); window_freed: the block of positions 0..3 given back, 4 slots
    g0, g1 = a.memory_by_group()
    assert (g0.token_states, g0.reserved, g0.internal_fragmentation, g0.window_freed) == (7, 1, 0, 4)
    assert (g1.token_states, g1.reserved, g1.internal_fragmentation, g1.window_freed) == (11, 1, 0, 0)
    assert a.held_without_sharing() == 5 * 4
    a.check()


# --- check() catches every corruption ---------------------------------------------------------------------------------


def _seq(a):
    return a._seqs[1]


def _index(a, block, h):
    a.pool.block_hash[block] = h
    a.pool.hash_block[h] = block


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda a: setattr(_seq(a), "computed", 12), "sequence 1: computed 12 of 11 tokens"),
        (lambda a: setattr(_seq(a), "computed", -1), "sequence 1: computed -1 of 11 tokens"),
        (lambda a: _seq(a).tables.append([]), "sequence 1 has not one table per group"),
        (lambda a: _seq(a).ghosts.append([]), "sequence 1 has not one table per group"),
        # 13 tokens need ceil(13 / 4) = 4 entries; computed 10 still gives back 1
        (lambda a: setattr(_seq(a), "tokens", 13), "sequence 1 group 0: 13 tokens in 3 table entries"),
        # computed 6: max(0, 6 - 3) // 4 = 0 positions out of the window, but one was given back
        (
            lambda a: setattr(_seq(a), "computed", 6),
            "sequence 1 group 0: 1 positions given back, the window of 6 computed tokens gives back 0",
        ),
        (lambda a: _seq(a).tables[0].__setitem__(0, 0), "sequence 1 group 0: block 0 at position 0, out of the window"),
        (lambda a: _seq(a).tables[1].__setitem__(0, 16), "sequence 1 group 1: block 16 at 0"),
        (lambda a: _seq(a).tables[1].__setitem__(0, -2), "sequence 1 group 1: block -2 at 0"),
        # a placeholder inside the window (the full group keeps every position)
        (lambda a: _seq(a).tables[1].__setitem__(0, NULL_BLOCK), "sequence 1 group 1: block -1 at 0"),
        (lambda a: a.group_of.__setitem__(2, 0), "block 2 of group 0 in group 1"),
        (
            lambda a: a.fill.__setitem__(4, 2),
            r"block 4 \(logical 2 of sequence 1, group 0\) has 2 tokens, expected 3",
        ),
        (lambda a: setattr(_seq(a), "hashes", ["x"]), "sequence 1 has 1 block keys, not 0"),
        (lambda a: a.pool.ref_counts.__setitem__(8, 1), "reference counts differ from block-table entries"),
        (lambda a: a.pool._free.remove(15), "free queue differs from unreferenced blocks"),
        (lambda a: a._held.__setitem__(0, 3), r"held-block counters \[3, 3\], blocks held \[2, 3\]"),
        (lambda a: a._tok.__setitem__(1, 10), r"token counters \[7, 10\], tokens in held blocks \[7, 11\]"),
        (lambda a: setattr(a, "_logical", 4), "block-table entry counter is wrong"),
        (lambda a: a._ghost_refs[0].update([("x",)]), "released-position counters are wrong"),
        (lambda a: a._ghost_refs[1].update([("x",)]), "released-position counters are wrong"),
    ],
)
def test_check_catches_corrupted_state(corrupt, message):
    a = _one()
    a.check()
    corrupt(a)
    with pytest.raises(AssertionError, match=message):
        a.check()


def test_check_catches_an_inconsistent_hash_index():
    a = _one()
    a.pool.block_hash[1] = (0, "k")
    a.pool.hash_block[(0, "k")] = 4
    with pytest.raises(AssertionError, match="hash index of block 1 is inconsistent"):
        a.check()


def test_check_catches_a_registered_block_that_is_not_full():
    a = _one()
    _index(a, 4, (0, "k"))  # block 4 holds 3 tokens
    with pytest.raises(AssertionError, match="registered block 4 is not full"):
        a.check()


def test_check_catches_a_block_indexed_under_another_group():
    a = _one()
    _index(a, 2, (0, "k"))  # block 2 is full, of group 1
    with pytest.raises(AssertionError, match="block 2 of group 1 indexed as 0"):
        a.check()


def test_check_catches_hash_index_sizes_that_differ():
    a = _one()
    _index(a, 1, (0, "k"))
    a.pool.hash_block[(1, "z")] = 2
    with pytest.raises(AssertionError, match="hash index sizes differ"):
        a.check()


def test_check_accepts_full_blocks_registered_in_their_groups():
    a = _one()
    _index(a, 1, (0, "k"))
    _index(a, 2, (1, "k"))
    _index(a, 3, (1, "m"))
    a.check()


@pytest.mark.parametrize("cls", [HybridPagedAllocator, HybridPagedPrefixCache])
def test_check_of_an_indexed_free_block(cls):
    a = _one() if cls is HybridPagedAllocator else _hybrid(cls)
    if cls is HybridPagedPrefixCache:
        a.admit(1, 6, 20)
        a.append(1, 4)
        a.append(1, 1)
    a.fill[7] = 4
    a.group_of[7] = 1
    _index(a, 7, (1, "w"))
    if cls.retain_cached:
        a.check()  # a cached block of the prefix cache
    else:
        with pytest.raises(AssertionError, match="a free block is still indexed without a prefix cache"):
            a.check()


def test_check_catches_tokens_in_a_free_block():
    a = _one()
    a.fill[6] = 1
    with pytest.raises(AssertionError, match="free block 6 holds 1 tokens, expected 0"):
        a.check()


# --- counters ---------------------------------------------------------------------------------------------------------


def test_hit_tokens_count_from_zero():
    a = _hybrid()
    assert a.hit_tokens == 0 and a.num_cow_copies == 0
    c = TokenContent(((G, 8),))
    assert a.admit(1, 9, 12, c) == 0  # blocks 0, 1 of both groups (G's tokens 0..3 and 4..7) indexed
    # a hit of (9 - 1) // 4 = 2 blocks: the full group needs both; the sliding group those in the window of 8
    # computed tokens: max(0, 8 - 3) // 4 = 1 skipped, so only block 1
    assert a.admit(2, 9, 12, c) == 8
    assert a.hit_tokens == 8
    a.check()


def test_window_freed_tells_apart_two_uses_of_one_block():
    # One sliding group of W = 1 (every computed token is out of the window: c // 4 skipped blocks) and 2 blocks.
    a = _hybrid(groups=(GroupSpec(SLIDING_WINDOW, 1),), num_blocks=2)
    a.admit(1, 4, 20)  # block 0
    a.append(1, 1)  # computed 4: block 0 given back (free queue: 1, 0); position 4 takes block 1
    assert a.block_tables(1) == ((NULL_BLOCK, 1),)
    a.admit(2, 4, 20)  # block 0 again, for other tokens
    a.append(2, 1)  # computed 4: block 0 given back again, and taken again for position 4
    assert a.block_tables(2) == ((NULL_BLOCK, 0),)
    # released: positions 0..3 of sequence 1 and positions 0..3 of sequence 2, different tokens in one physical
    # block at two times: two released blocks of 4 slots
    assert a.memory_by_group()[0].window_freed == 2 * 4
    a.check()
    a.free(1)
    assert a.memory_by_group()[0].window_freed == 4
    a.check()


# --- token identities: what a block's key says it holds ---------------------------------------------------------------


def test_a_block_of_content_then_own_tokens_is_not_the_contents():
    # live sharing: sequence 1's content is 4 tokens of G, then it writes 4 of its own; sequence 2's content is 8
    # tokens of G. Only block 0 holds the same tokens: a hit of 4, not 8.
    a = _hybrid()
    a.admit(1, 4, 20, TokenContent(((G, 4),)))
    a.append(1, 4)  # computed 4: nothing out of the window; block 1 of each group is full, of its own tokens
    assert a.prefix_hit_tokens(2, 9, TokenContent(((G, 8),))) == 4
    a.check()


def test_prefix_cache_hits_own_tokens_written_across_several_appends():
    a = _hybrid(HybridPagedPrefixCache)
    c = TokenContent(((G, 2),))
    a.admit(1, 3, 16, c)  # G G, then its own token 2
    a.append(1)  # own token 3: block 0 full (G G and own tokens 2..3)
    a.append(1, 4)  # own tokens 4..7: block 1 full
    a.append(1)  # own token 8 in block 2; computed 8: sliding block 0 given back (still cached)
    a.check()
    a.free(1)
    # recomputed: G G and own tokens 2..8, the same tokens in both full blocks: a hit of (9 - 1) // 4 = 2 blocks
    # (the sliding group needs only block 1, max(0, 8 - 3) // 4 = 1 being out of the window)
    assert a.prefix_hit_tokens(1, 9, c) == 8
    assert a.admit(1, 9, 16, c) == 8
    a.check()


def test_prefix_cache_hits_own_tokens_of_a_sequence_admitted_without_content():
    a = _hybrid(HybridPagedPrefixCache)
    a.admit(1, 2, 16)  # its own tokens 0, 1
    a.append(1, 2)  # own tokens 2, 3: block 0 full
    a.append(1, 3)  # 7 tokens
    a.free(1)
    # recomputed: block 0 holds its tokens 0..3 in both groups (the sliding group keeps it in the window of 4
    # computed tokens: max(0, 4 - 3) // 4 = 0 skipped); (7 - 1) // 4 = 1 block at most
    assert a.admit(1, 7, 16) == 4
    a.check()


def test_a_forks_own_tokens_are_not_its_parents():
    a = _hybrid(HybridPagedPrefixCache)
    a.admit(1, 1, 20)  # own token 0
    a.append(1, 3)  # own tokens 1..3: block 0 full, keyed as sequence 1's tokens 0..3
    a.append(1, 2)  # 6 tokens
    a.fork(1, 2)  # the child holds the parent's tokens 0..5
    a.append(2, 2)  # the child writes its own tokens 6, 7 into a copy of block 1: full
    assert a.take_copy_ops() != []
    a.free(1)
    # sequence 1 recomputed (its own tokens 0..8): block 0 holds them (held by the child); the child's block 1 holds
    # the parent's tokens 4, 5 but the child's own 6, 7: a hit of 4 tokens only
    assert a.prefix_hit_tokens(1, 9) == 4
    a.check()


def test_a_child_of_an_empty_parent_is_hit_on_its_own_tokens():
    a = _hybrid(HybridPagedPrefixCache)
    a.admit(1, 0, 8)  # no tokens yet
    a.fork(1, 2)
    a.append(2, 5)  # the child's own tokens 0..4: block 0 full
    a.free(1)
    a.free(2)
    assert a.admit(2, 5, 8) == 4  # sequence 2 recomputed: its block 0 hits
    a.check()


def test_a_long_hit_of_chained_keys():
    # two content runs: the keys are hashes chained over the previous block's key, not (tag, index)
    c = TokenContent(((("group", 1), 2), (("group", 2), 12)))
    a = _hybrid()
    a.admit(1, 14, 20, c)  # blocks 0..3 of each group, the full ones 0..2 indexed
    # (14 - 1) // 4 = 3 blocks: the full group needs 0..2, the sliding group those in the window of 12 computed
    # tokens: max(0, 12 - 3) // 4 = 2 skipped, so block 2 (its key chained over blocks 0 and 1)
    assert a.prefix_hit_tokens(2, 14, c) == 12
    a.check()


def test_a_hit_of_one_token_with_blocks_of_one():
    # blocks of 1 token: a sequence of 2 tokens can hit its first token (one is always left to compute)
    c = TokenContent(((G, 2),))
    a = HybridPagedAllocator(16, 1, 64, groups=(SW4, FULL_G))
    a.admit(1, 2, 4, c)  # blocks of tokens 0 and 1 in each group, both full and indexed
    # the sliding group keeps the window of 1 computed token: max(0, 1 - 3) // 1 = 0 skipped, so block 0
    assert a.prefix_hit_tokens(2, 2, c) == 1
    assert a.prefix_hit_tokens(2, 1, c) == 0  # a single token is always computed
    assert a.admit(2, 2, 4, c) == 1
    a.check()


def test_a_hit_inside_a_wide_window_needs_every_sliding_block():
    # W = 32 covers the whole hit: max(0, 8 - 31) // 4 = 0 blocks skipped, so the sliding group must hold blocks 0, 1
    c = TokenContent(((G, 8),))
    a = _hybrid(groups=(GroupSpec(SLIDING_WINDOW, 32), FULL_G))
    a.admit(1, 9, 12, c)
    assert a.prefix_hit_tokens(2, 9, c) == 8
    assert a.admit(2, 9, 12, c) == 8
    assert a.block_tables(2)[0][:2] == a.block_tables(1)[0][:2]
    a.check()


# --- the peak of a lone request ---------------------------------------------------------------------------------------


def test_the_first_append_after_the_prompt_can_be_the_peak():
    a = _hybrid()
    # prompt of 4 tokens: 1 block per group (2); the append to 5 tokens (computed 4: max(0, 4 - 3) // 4 = 0 out of
    # the window) needs a second block in each group: 4, the peak
    assert a.peak_blocks(5, 4) == 4
    assert _hybrid(num_blocks=3).never_fits(5, 4) == "needs 4 blocks; the KV cache has 3"
    assert _hybrid(num_blocks=4).never_fits(5, 4) is None


def test_a_prompt_is_held_whole_even_with_a_window_of_one_token():
    # W = 1, blocks of 1: at admission the 5 prompt blocks are all held (nothing is computed before the prompt);
    # afterwards a sequence of t tokens that computed t - 1 holds t - (t - 1) = 1 block
    a = HybridPagedAllocator(4, 1, 64, groups=(GroupSpec(SLIDING_WINDOW, 1),))
    assert a.peak_blocks(5, 5) == 5
    assert a.peak_blocks(9, 1) == 1
    assert a.never_fits(5, 5) == "needs 5 blocks; the KV cache has 4"


def test_no_blocks_for_a_length_below_zero():
    # blocks of 1 (where a negative token count would round to -1 block): the prompt is clamped to
    # max(0, min(0, -1)) = 0 tokens, 0 blocks, and there is no length from 1 to -1 to grow through
    a = HybridPagedAllocator(16, 1, 64, groups=(SW4, FULL_G))
    assert a.peak_blocks(-1, 0) == 0
    assert a.peak_blocks(0, 0) == 0


def test_the_peak_counts_the_window_of_the_tokens_computed_before_the_last_append():
    # blocks of 1, a sliding group of W = 2 and a full group; prompt 1, final length 5. At 5 tokens (computed 4):
    # the full group holds 5 blocks; the sliding group gives back max(0, 4 - 2 + 1) = 3 positions and holds 2: 7
    a = HybridPagedAllocator(16, 1, 64, groups=(GroupSpec(SLIDING_WINDOW, 2), FULL_G))
    assert a.peak_blocks(5, 1) == 7


# --- admission --------------------------------------------------------------------------------------------------------


def test_a_negative_token_count_is_refused():
    a = _hybrid()
    assert not a.can_admit(1, -1, 4)
    with pytest.raises(AllocationError, match=r"cannot admit sequence 1 \(-1 tokens\)$"):
        a.admit(1, -1, 4)
    assert a.can_admit(1, 0, 4)
    assert a.admit(1, 0, 4) == 0
    assert a.block_tables(1) == ((), ())


def test_cached_hits_fit_exactly_the_free_blocks():
    # 15 blocks; the content's 8 tokens of G
    a = _hybrid(HybridPagedPrefixCache, num_blocks=15)
    c = TokenContent(((G, 8),))
    a.admit(1, 9, 12, c)  # g0 takes 0, 1, 2 and g1 takes 3, 4, 5; blocks 0, 1 and 3, 4 are full and indexed
    a.free(1)  # group by group, tails first: the free queue is 6..14, 2, 1, 0, 5, 4, 3
    a.admit(3, 17, 20)  # 5 blocks per group: 6..14 and 2; free: 1, 0, 5, 4, 3
    # sequence 2 hits 2 blocks: the full group's cached 3 and 4, the sliding group's cached 1 (block 0 is out of
    # the window: max(0, 8 - 3) // 4 = 1), all three out of the free queue, and one new block per group: 5 = free
    assert a.can_admit(2, 9, 12, c)
    assert a.admit(2, 9, 12, c) == 8
    assert a.block_tables(2) == ((NULL_BLOCK, 1, 0), (3, 4, 5))
    assert a.num_free_blocks == 0
    a.check()


def test_without_sharing_each_sequences_released_blocks_count_apart():
    # sharing off: two sequences with the same content hold their own blocks, and each window gives its own back
    a = _hybrid(sharing=False)
    c = TokenContent(((G, 8),))
    a.admit(1, 8, 20, c)  # g0: 0, 1; g1: 2, 3
    a.append(1)  # computed 8: max(0, 8 - 3) // 4 = 1: block 0 given back; position 8 takes 4 and 5
    assert a.admit(2, 8, 20, c) == 0  # no hit without sharing: g0: 6, 7; g1: 8, 9
    a.append(2)  # block 6 given back
    assert a.block_tables(2)[0][:2] == (NULL_BLOCK, 7)
    # released: positions 0..3 of each sequence, in blocks 0 and 6: 2 x 4 slots a full layout would hold
    assert a.memory_by_group()[0].window_freed == 2 * 4
    assert a.pool.block_hash == {}  # nothing is indexed without sharing
    a.check()


# --- appends ----------------------------------------------------------------------------------------------------------


def test_appending_no_token_copies_nothing():
    a = _hybrid(num_blocks=4)
    a.admit(1, 6, 20)  # 2 blocks per group: all 4
    a.fork(1, 2)  # the last blocks (2 tokens each) are shared
    assert a.can_append(2, 0)
    a.append(2, 0)
    assert a.take_copy_ops() == [] and a.num_cow_copies == 0
    assert a.block_tables(2) == a.block_tables(1)
    assert not a.can_append(2, 1)  # a token would copy both last blocks: 2 blocks, none free
    a.check()


def test_append_queries_default_to_one_token():
    a = _hybrid(num_blocks=4)
    a.admit(1, 7, 20)  # 2 blocks per group, none free
    # one token: computed 7 gives back max(0, 7 - 3) // 4 = 1 sliding block; the token fits in the last blocks
    assert a.can_append(1)
    assert not a.can_append(1, 2)  # a ninth token needs a block per group: 2, and 1 comes back
    a.append(1)
    assert a.num_tokens(1) == 8
    b = _hybrid(num_blocks=4)
    b.admit(1, 8, 20)  # at a block boundary: one token needs a block per group (2), 1 comes back
    assert not b.can_append(1)
    assert b.can_append(1, 0)
    with pytest.raises(AllocationError, match="no free block for sequence 1 to grow by 1"):
        b.append(1)


def test_append_refuses_a_negative_count_and_a_sequence_not_live():
    a = _hybrid()
    a.admit(1, 6, 20)
    assert not a.can_append(1, -1) and not a.can_append(9)
    with pytest.raises(AllocationError, match="sequence 1 is not live"):
        a.append(1, -1)
    with pytest.raises(AllocationError, match="sequence 9 is not live"):
        a.append(9)
    assert a.num_tokens(1) == 6
    a.check()


# --- forks ------------------------------------------------------------------------------------------------------------


def test_can_fork_needs_a_live_parent_and_a_new_child():
    a = _hybrid()
    a.admit(1, 6, 20)
    a.admit(2, 3, 20)
    assert a.can_fork(1, 3)
    assert not a.can_fork(1, 2) and not a.can_fork(1, 1)  # the child is live
    assert not a.can_fork(9, 3)  # the parent is not
    with pytest.raises(AllocationError, match="cannot fork sequence 1 into 2"):
        a.fork(1, 2)


def test_a_fork_without_sharing_fits_exactly_the_free_blocks():
    a = _hybrid(num_blocks=8, sharing=False)
    a.admit(1, 6, 20)  # 2 blocks per group: 4 held, 4 free
    assert a.can_fork(1, 2)  # a copy of the 4 held blocks
    a.fork(1, 2)
    assert a.num_free_blocks == 0 and len(a.take_copy_ops()) == 4
    assert not a.can_fork(1, 3)
    a.check()


def test_a_forks_tokens_before_the_fork_are_its_parents():
    a = _hybrid(HybridPagedPrefixCache)
    a.admit(1, 1, 20)  # own token 0
    a.append(1, 3)  # own tokens 1..3: block 0 full
    a.append(1, 2)  # own tokens 4, 5
    a.fork(1, 2)  # the child holds sequence 1's tokens 0..5
    a.append(2, 2)  # and writes its own 6, 7: its block 1 (a copy) is full
    a.free(2)
    # sequence 2 again, its content named as sequence 1's first 6 tokens, then its own: block 0 (sequence 1's
    # tokens 0..3, held by sequence 1) and the cached block 1 (sequence 1's tokens 4, 5, its own 6, 7) hold the
    # same tokens; the sliding group needs only block 1 (max(0, 8 - 3) // 4 = 1 skipped): a hit of 8
    assert a.prefix_hit_tokens(2, 9, TokenContent(((("seq", 1), 6),))) == 8
    a.check()


# --- fast-forward -----------------------------------------------------------------------------------------------------


def test_run_decode_refuses_no_rounds_and_repeated_sequences():
    a = _hybrid()
    a.admit(1, 6, 20)
    a.admit(2, 6, 20)
    assert a.run_decode([1], 0, None) is None
    assert a.run_decode([1, 2, 1], 2, None) is None
    assert a.run_decode([1, 3], 2, None) is None  # 3 is not live
    assert a.num_tokens(1) == 6 and a.num_tokens(2) == 6
    a.check()


def test_run_decode_takes_the_block_its_window_gives_back():
    # one sliding group of W = 4 and 2 blocks, both held by 8 tokens: the ninth token (computed 8) gives back
    # block 0 (max(0, 8 - 3) // 4 = 1 block out of the window) and needs a block for position 8: block 0 again
    a = _hybrid(groups=(SW4,), num_blocks=2)
    a.admit(1, 8, 20)
    plan = a.run_decode([1], 1, None)
    assert plan.rounds == 1
    assert a.block_tables(1) == ((NULL_BLOCK, 1, 0),)
    a.check()


def test_run_decode_stops_before_writing_into_a_shared_block_behind_a_placeholder():
    # one sliding group of W = 4: at 10 tokens (computed 8) table [NULL, 1, 2]; a fork shares blocks 1 and 2, and
    # block 2 is partly filled (2 tokens): the next token of either branch copies it, so no round is made
    a = _hybrid(groups=(SW4,), num_blocks=8)
    a.admit(1, 8, 20)
    a.append(1, 2)
    assert a.block_tables(1) == ((NULL_BLOCK, 1, 2),)
    a.fork(1, 2)
    plan = a.run_decode([1, 2], 3, None)
    assert plan.rounds == 0
    assert a.block_tables(1) == a.block_tables(2) == ((NULL_BLOCK, 1, 2),)
    a.check()


def test_apply_decode_applies_only_the_rounds_of_its_plan():
    a = _hybrid()
    a.admit(1, 6, 20)
    plan = a.plan_decode([1], 3, None)
    assert plan.rounds == 3 and a.num_tokens(1) == 6  # planned on a copy
    with pytest.raises(AllocationError, match="cannot apply -1 rounds of a 3-round plan"):
        a.apply_decode(plan, -1)
    with pytest.raises(AllocationError, match="cannot apply 4 rounds of a 3-round plan"):
        a.apply_decode(plan, 4)
    assert a.num_tokens(1) == 6
    a.apply_decode(plan, 3)
    assert a.num_tokens(1) == 9
    a.check()


# --- memory -----------------------------------------------------------------------------------------------------------


def test_a_shared_last_block_reserves_what_its_branches_still_write():
    a = _hybrid()
    a.admit(1, 6, 7)  # the last blocks hold 2 of 4 tokens; one more token to come: 1 reserved slot per group
    a.fork(1, 2)  # both branches share the last blocks and will each write 1 more token: still 1 slot per group
    assert [g.reserved for g in a.memory_by_group()] == [1, 1]
    # the other categories: 6 tokens per group in 2 blocks (8 slots), 1 reserved, 1 slot never written
    assert [(g.token_states, g.internal_fragmentation) for g in a.memory_by_group()] == [(6, 1), (6, 1)]
    a.check()


# --- window_freed of a fork without sharing ---------------------------------------------------------------------------


def test_without_sharing_a_fork_counts_the_positions_its_parent_gave_back_for_both_branches():
    a = _hybrid(sharing=False)
    a.admit(1, 8, 20)  # g0: 0, 1; g1: 2, 3
    a.append(1)  # computed 8: max(0, 8 - 3) // 4 = 1: block 0 given back; position 8 takes 4 (g0) and 5 (g1)
    assert a.memory_by_group()[0].window_freed == 4
    a.fork(1, 2)  # no sharing: the child gets copies of the 5 held blocks; positions 0..3 are out of both windows
    # a full-attention layout without sharing would hold positions 0..3 once per branch: 2 blocks of 4 slots
    assert a.memory_by_group()[0].window_freed == 2 * 4
