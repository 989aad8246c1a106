"""Paged allocators, worked out by hand: refusals and their messages, boundaries at exact capacity, copy-on-write,
forks without sharing, and check()'s assertions (each by corrupting one piece of an allocator's state on purpose),
where generated mutants showed them untested.

Unless said otherwise: PagedAllocator with 8 blocks of 4 slots (capacity 32).
"""

import pytest

from sim.allocators.base import AllocationError, BlockTablePlacement, TokenContent
from sim.allocators.paged import PagedAllocator, PagedPrefixCache


def _paged(**kw):
    return PagedAllocator(num_blocks=8, block_size=4, max_model_len=32, **kw)


def _mem(a):
    return tuple(a.memory().as_dict().values())


# --- refusals and boundaries ------------------------------------------------------------------------------------


def test_never_fits_at_exactly_the_capacity():
    a = _paged()
    assert a.never_fits(32) is None
    assert a.never_fits(33) == "needs 9 blocks; the KV cache has 8"
    big = PagedAllocator(num_blocks=2000, block_size=1, max_model_len=4000)
    assert big.never_fits(2001) == "needs 2,001 blocks; the KV cache has 2,000"


def test_admit_up_to_exactly_the_free_blocks():
    a = _paged()
    assert a.can_admit(1, 32, 32)
    assert not a.can_admit(1, 33, 33)
    assert not a.can_admit(1, -1, 4)
    assert a.can_admit(1, 0, 4)
    with pytest.raises(AllocationError, match=r"cannot admit sequence 1 \(33 tokens\): 9 blocks needed"):
        a.admit(1, 33, 33)
    with pytest.raises(AllocationError, match=r"cannot admit sequence 1 \(-1 tokens\)$"):
        a.admit(1, -1, 4)
    assert a.admit(1, 6, 10) == 0
    assert not a.can_admit(1, 1, 1)
    with pytest.raises(AllocationError, match=r"cannot admit sequence 1 \(1 tokens\)$"):
        a.admit(1, 1, 1)
    assert a.can_admit(2, 24, 24)  # the 6 free blocks
    assert not a.can_admit(2, 25, 25)
    assert a.admit(2, 24, 24) == 0
    assert a.num_free_blocks == 0
    a.check()


def test_admit_places_and_counts():
    a = _paged()
    a.admit(1, 6, 10)
    assert a.placement(1) == BlockTablePlacement(4, (0, 1))
    assert a.num_tokens(1) == 6
    # 2 blocks: 6 tokens, 2 reserved (the last block's 2 empty slots; 4 more tokens to come), 24 free
    assert _mem(a) == (6, 2, 0, 0, 24)
    assert a.held_without_sharing() == 8
    a.check()


def test_append_refusals_and_exact_fit():
    a = _paged()
    a.admit(1, 6, 32)
    assert not a.can_append(9)
    assert not a.can_append(1, -1)
    assert a.can_append(1, 0)
    assert a.can_append(1, 26)  # 32 tokens: the 6 free blocks exactly
    assert not a.can_append(1, 27)
    assert a.blocks_needed_to_append(1, 26) == 6
    assert a.blocks_needed_to_append(1) == 0  # room in the last block
    with pytest.raises(AllocationError, match="sequence 9 is not live"):
        a.append(9)
    with pytest.raises(AllocationError, match="sequence 1 is not live"):
        a.append(1, -1)
    with pytest.raises(AllocationError, match="no free block for sequence 1 to grow by 27"):
        a.append(1, 27)
    a.append(1, 26)
    assert a.num_tokens(1) == 32
    assert a.num_free_blocks == 0
    assert not a.can_append(1)
    a.check()


def test_free_and_fork_refusals():
    a = _paged()
    a.admit(1, 6, 10)
    a.admit(2, 4, 4)
    with pytest.raises(AllocationError, match="sequence 9 is not live"):
        a.free(9)
    assert not a.can_fork(9, 3)
    assert not a.can_fork(1, 2)  # 2 is live
    with pytest.raises(AllocationError, match="cannot fork sequence 1 into 2"):
        a.fork(1, 2)
    a.check()


# --- sharing ----------------------------------------------------------------------------------------------------


def test_fork_then_copy_on_write():
    a = _paged()
    a.admit(1, 6, 10)  # blocks 0 (4 tokens), 1 (2 tokens)
    a.fork(1, 2)
    assert a.placement(2) == BlockTablePlacement(4, (0, 1))
    assert a.pool.ref_counts[:2] == [2, 2]
    assert _mem(a) == (6, 2, 0, 0, 24)  # the shared last block's 2 empty slots are reserved once
    assert a.held_without_sharing() == 16
    assert a.blocks_needed_to_append(2) == 1  # the copy
    assert a.blocks_needed_to_append(2, 0) == 0  # nothing written: no copy
    a.append(2)  # writes into a private copy of block 1: block 2, then its 3rd token
    assert a.placement(2) == BlockTablePlacement(4, (0, 2))
    assert a.take_copy_ops() == [(1, 2)]
    assert a.take_copy_ops() == []
    assert a.num_cow_copies == 1
    assert a.pool.ref_counts[:3] == [2, 1, 1]
    # blocks 0 (4), 1 (2), 2 (3): 9 tokens in 12 slots; reserved 2 (seq 1) + 1 (seq 2)
    assert _mem(a) == (9, 3, 0, 0, 20)
    a.check()
    a.free(1)
    assert _mem(a) == (7, 1, 0, 0, 24)
    a.check()


def test_fork_without_sharing_copies_every_block():
    a = _paged(sharing=False)
    a.admit(1, 6, 10)
    a.admit(2, 20, 20)  # 5 blocks: 1 left
    assert not a.can_fork(1, 3)  # 2 blocks needed
    a.free(2)
    assert a.can_fork(1, 3)
    a.fork(1, 3)
    # free returned 2..6 in reverse order behind 7: the free queue is 7, 6, 5, 4, 3, 2
    assert a.placement(3) == BlockTablePlacement(4, (7, 6))
    assert a.take_copy_ops() == [(0, 7), (1, 6)]
    assert _mem(a) == (12, 4, 0, 0, 16)
    a.check()


def test_fork_without_sharing_at_exactly_the_free_blocks():
    a = _paged(sharing=False)
    a.admit(1, 8, 8)  # 2 blocks
    a.admit(2, 16, 16)  # 4 blocks: 2 left
    assert a.can_fork(1, 3)
    a.fork(1, 3)
    assert a.num_free_blocks == 0
    a.check()


# --- decode plans -----------------------------------------------------------------------------------------------


def test_apply_decode_bounds():
    a = _paged()
    a.admit(1, 3, 10)
    plan = a.plan_decode([1], 2, None)
    assert plan.rounds == 2
    for bad in (3, -1):
        with pytest.raises(AllocationError, match=f"cannot apply {bad} rounds of a 2-round plan"):
            a.apply_decode(plan, bad)
    a.apply_decode(plan, 0)
    assert a.num_tokens(1) == 3
    a.apply_decode(plan, 2)
    assert a.num_tokens(1) == 5
    a.check()


def test_plan_decode_declines():
    a = _paged()
    a.admit(1, 3, 10)
    a.admit(2, 3, 10)
    assert a.plan_decode([1, 2], 0, None) is None
    assert a.plan_decode([1], 3, None) is None
    assert a.plan_decode([1, 9], 3, None) is None


# --- check() ----------------------------------------------------------------------------------------------------


def _two(cls=PagedAllocator):
    a = cls(num_blocks=8, block_size=4, max_model_len=32)
    a.admit(1, 6, 10)  # blocks 0, 1
    a.admit(2, 4, 5)  # block 2
    a.check()
    return a


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda a: setattr(a._seqs[1], "base", -1 - a._round), "sequence 1 holds -1 tokens$"),
        (lambda a: setattr(a._seqs[1], "base", 9 - a._round), "sequence 1 holds 9 tokens in 2 blocks"),
        (lambda a: a.fill.__setitem__(0, 3), r"block 0 \(logical 0 of sequence 1\) has 3 tokens, expected 4"),
        (lambda a: a._ring[-a._seqs[1].base % 4].pop(1), "sequence 1 is not in its ring bucket"),
        (lambda a: a._forked.__setitem__(1, a._seqs[1]), "forked set wrong for sequence 1"),
        (lambda a: a._ring[0].__setitem__(99, a._seqs[2]), "ring holds sequences that are not live"),
        (lambda a: setattr(a._seqs[1], "order", 5), "live order is not admission/fork order"),
        (lambda a: a.pool.ref_counts.__setitem__(5, 1), "reference counts differ from block-table entries"),
        (lambda a: a.pool._free.remove(7), "free queue differs from unreferenced blocks"),
        (lambda a: setattr(a, "_held_blocks", 4), "held-block counter is wrong"),
        (lambda a: setattr(a, "_tokens", 11), "token counter is wrong"),
        (lambda a: setattr(a, "_seq_tokens", 11), "sequence-token counter is wrong"),
        (lambda a: setattr(a, "_logical_blocks", 4), "logical counter wrong"),
        (lambda a: setattr(a, "_num_indexed", 1), "indexed counter is wrong"),
        (lambda a: setattr(a, "_res_sum", 3), "running sum of reserved slots is stale"),
        (lambda a: setattr(a, "_res_pos", 2), "count of reserving sequences is stale"),
        (lambda a: a._res_zero.__setitem__(99, 1), "rounds at which reservations end are stale"),
    ],
)
def test_check_catches_corrupted_state(corrupt, message):
    a = _two()
    corrupt(a)
    with pytest.raises(AssertionError, match=message):
        a.check()


def test_check_catches_a_partly_filled_block_shared_without_a_fork():
    a = _paged()
    a.admit(1, 2, 4)  # block 0
    a.admit(2, 2, 4)  # block 1
    # sequence 2 now points at block 0 as well, and block 1 goes back to the free queue: every counter is made
    # consistent, but both unforked sequences reserve the same 2 empty slots of block 0 (the running sum says 4)
    a._seqs[2].block_table = [0]
    a.pool.incref(0)
    a.pool.decref(1)
    a._held_blocks, a._tokens = 1, 2
    with pytest.raises(AssertionError, match="reserved slots are stale"):
        a.check()


def _index(a, block, h):
    a.pool.block_hash[block] = h
    a.pool.hash_block[h] = block


def test_check_catches_an_inconsistent_hash_index():
    a = _two()
    a.pool.block_hash[0] = "x"
    a.pool.hash_block["x"] = 2
    with pytest.raises(AssertionError, match="hash index of block 0 is inconsistent"):
        a.check()


def test_check_catches_a_registered_block_that_is_not_full():
    a = _two()
    _index(a, 1, "y")  # block 1 holds 2 tokens
    with pytest.raises(AssertionError, match="registered block 1 is not full"):
        a.check()


def test_check_catches_hash_index_sizes_that_differ():
    a = _two()
    _index(a, 0, "x")
    a.pool.hash_block["z"] = 2
    with pytest.raises(AssertionError, match="hash index sizes differ"):
        a.check()


def test_check_accepts_a_full_registered_block():
    a = _two()
    _index(a, 0, "x")
    _index(a, 2, "z")
    a.check()


@pytest.mark.parametrize("cls", [PagedAllocator, PagedPrefixCache])
def test_check_of_an_indexed_free_block(cls):
    a = _two(cls)
    _index(a, 7, "w")
    a.fill[7] = 4
    if cls.retain_cached:
        a.check()  # a cached block of the prefix cache
    else:
        with pytest.raises(AssertionError, match="a free block is still indexed without a prefix cache"):
            a.check()


def test_check_passes_on_valid_edge_states():
    a = _paged()
    a.admit(1, 0, 4)  # no tokens, no blocks
    a.admit(2, 3, 10)
    a.check()
    assert a.append_round() == 1 + 4  # a lazy round: both sequences hold one more token
    assert a.num_tokens(2) == 4
    a.check()
    assert a.append_round() == 2 + 5
    assert a.placement(2) == BlockTablePlacement(4, (0, 2))  # block 1 went to sequence 1 in the first round
    assert a.blocks_needed_to_append(2, 3) == 0  # 5 + 3 tokens fill its 2 blocks
    assert a.blocks_needed_to_append(2, 4) == 1
    a.check()


def test_names_flags_and_pool_mode():
    assert (PagedAllocator.name, PagedPrefixCache.name) == ("paged", "paged-prefix-cache")
    assert PagedAllocator.description and PagedPrefixCache.description
    assert PagedAllocator.grows_on_demand is True and PagedAllocator.supports_fork is True
    assert (PagedAllocator.retain_cached, PagedPrefixCache.retain_cached) == (False, True)
    # only the prefix cache with sharing on keeps freed blocks' content
    assert _paged().pool.retain_cached is False
    assert _paged(sharing=False).pool.retain_cached is False
    assert PagedPrefixCache(8, 4, 32).pool.retain_cached is True
    assert PagedPrefixCache(8, 4, 32, sharing=False).pool.retain_cached is False


def test_fill_counts_written_tokens_of_every_block():
    a = _paged()
    assert a.fill == [0] * 8
    a.admit(1, 6, 10)
    a.admit(2, 3, 10)
    assert a.fill == [4, 2, 3, 0, 0, 0, 0, 0]
    a.free(1)
    assert a.fill == [0, 0, 3, 0, 0, 0, 0, 0]


# --- shared prefixes and the prefix cache -----------------------------------------------------------------------

G = ("group", 1)


def test_shared_prefix_maps_the_leading_full_blocks():
    a = _paged()
    c = TokenContent(((G, 10),))
    assert a.admit(1, 10, 12, c) == 0  # blocks 0, 1, 2; keys (G, 0), (G, 1) for the full blocks 0 and 1
    assert a.hit_tokens == 0
    assert a.admit(2, 10, 12, c) == 8  # maps blocks 0 and 1, computes block 2's 2 tokens into block 3
    assert a.hit_tokens == 8
    assert a.placement(2) == BlockTablePlacement(4, (0, 1, 3))
    assert a.pool.ref_counts[:4] == [2, 2, 1, 1]
    assert _mem(a) == (12, 4, 0, 0, 16)
    a.check()


def test_a_sequence_without_content_shares_nothing():
    a = _paged()
    # another sequence's content run happens to carry sequence 1's own tag: its blocks are indexed under it
    assert a.admit(3, 9, 9, TokenContent(((("seq", 1), 8),))) == 0
    assert a.admit(1, 9, 9) == 0  # no content: its tokens are its own, never looked up without a cache
    assert a.hit_tokens == 0
    a.check()


def test_no_sharing_shares_no_prefix():
    a = _paged(sharing=False)
    c = TokenContent(((G, 10),))
    a.admit(1, 10, 12, c)
    assert a.admit(2, 10, 12, c) == 0
    assert a.placement(2) == BlockTablePlacement(4, (3, 4, 5))
    a.check()


def test_prefix_cache_hits_a_recomputed_sequence_own_tokens():
    a = PagedPrefixCache(8, 4, 32)
    c = TokenContent(((G, 4),))
    assert a.admit(1, 4, 12, c) == 0  # block 0 = (G, 0)
    a.append(1, 5)  # tokens 4..8 are its own: blocks 1 (full, keyed over (G, 0)) and 2
    a.check()
    a.free(1)  # blocks 0 and 1 stay cached
    assert a.admit(1, 9, 12, c) == 8  # recomputed after preemption: the same identities, blocks 0 and 1 hit
    assert a.placement(1).block_table[:2] == (0, 1)
    a.check()


def test_prefix_cache_hits_own_tokens_written_across_several_appends():
    a = PagedPrefixCache(8, 4, 32)
    c = TokenContent(((G, 2),))
    assert a.admit(1, 3, 12, c) == 0  # G G, then its own token 2
    a.append(1)  # own token 3: block 0 full, keyed over G G and own tokens 2..3 (one run)
    a.append(1, 4)  # own tokens 4..7: block 1 full
    a.append(1)  # own token 8 in block 2
    a.check()
    a.free(1)
    # recomputed: runs_from gives G G and one own run 2..8, the same identities in the same pieces
    assert a.admit(1, 9, 12, c) == 8
    assert a.placement(1).block_table[:2] == (0, 1)
    a.check()


def test_a_block_mixing_two_content_runs_is_keyed_by_both():
    a = _paged()
    A, B = ("group", 1), ("group", 2)
    assert a.admit(1, 7, 12, TokenContent(((A, 3), (B, 4)))) == 0  # block 0 = A A A B: not B's first block
    assert a.admit(2, 5, 12, TokenContent(((B, 5),))) == 0  # B B B B: no hit
    assert a.admit(3, 5, 12, TokenContent(((A, 3), (B, 2)))) == 4  # A A A B: hits block 0
    a.check()


def test_prefix_cache_hits_a_chain_of_hashed_blocks():
    a = PagedPrefixCache(8, 4, 32)
    c = TokenContent(((G, 2),))
    a.admit(1, 3, 16, c)
    a.append(1, 10)  # 13 tokens: blocks 0..2 full, each keyed over the previous block's key
    a.free(1)
    assert a.admit(1, 13, 16, c) == 12
    a.check()


def test_the_same_content_computed_twice_is_indexed_once():
    a = _paged()
    c = TokenContent(((("group", 1), 2), (("group", 2), 6)))  # two runs: every block key is hashed
    assert a.admit(1, 8, 8, c) == 0  # blocks 0 and 1, both full and indexed
    # the same 8 tokens: block 0 hits, block 1 is computed again (one token is always left to compute) into block 2,
    # whose content is already indexed (at block 1): it is not indexed again
    assert a.admit(2, 8, 8, c) == 4
    assert a.placement(2) == BlockTablePlacement(4, (0, 2))
    assert sorted(a.pool.hash_block.values()) == [0, 1]
    assert sorted(a.pool.block_hash) == [0, 1]
    a.check()


def test_prefix_cache_hits_the_own_tokens_of_a_child_of_an_empty_parent():
    a = PagedPrefixCache(8, 4, 32)
    a.admit(1, 0, 8)  # no tokens yet (its runs are empty)
    a.fork(1, 2)
    a.append(2, 5)  # the child's own tokens 0..4: block 0 full, keyed (("seq", 2), 0)
    a.free(1)
    a.free(2)
    assert a.admit(2, 5, 8) == 4  # sequence 2 recomputed: its block 0 hits
    a.check()


def test_a_round_gives_blocks_in_live_order_after_a_sequence_reattached():
    a = _paged()
    a.admit(1, 2, 32)  # block 0, first in live order
    a.admit(2, 3, 32)  # block 1
    a.append(1)  # both hold 3 tokens now; 1 re-entered the lazy-round bookkeeping after 2
    assert a.round_crossers() == []  # round 1 fills both last blocks
    assert a.append_round() == 8
    assert a.round_crossers() == [1, 2]  # round 2: both need a block, 1 first
    assert a.append_round() == 10
    assert a.placement(1) == BlockTablePlacement(4, (0, 2))
    assert a.placement(2) == BlockTablePlacement(4, (1, 3))
    a.check()


def test_run_decode_gives_blocks_in_live_order_after_a_sequence_reattached():
    a = _paged()
    a.admit(1, 2, 32)
    a.admit(2, 3, 32)
    a.append(1)
    plan = a.run_decode([1, 2], 2, None)
    assert plan.rounds == 2
    assert a.placement(1) == BlockTablePlacement(4, (0, 2))
    assert a.placement(2) == BlockTablePlacement(4, (1, 3))
    a.check()


@pytest.mark.parametrize(("other_tokens", "fits"), [(20, True), (24, False)])
def test_cached_hits_count_against_the_free_blocks(other_tokens, fits):
    a = PagedPrefixCache(8, 4, 32)
    c = TokenContent(((G, 8),))
    a.admit(1, 9, 12, c)  # blocks 0, 1 (indexed) and 2
    a.free(1)  # free queue 3, 4, 5, 6, 7, 2, 1, 0: blocks 0 and 1 cached
    a.admit(3, other_tokens, 32)  # 5 blocks leave 2, 1, 0 free; 6 leave 1, 0
    # sequence 2 hits the cached blocks 0 and 1, which leave the free queue, and needs one more: 3 free blocks
    assert a.can_admit(2, 9, 12, c) is fits
    if fits:
        assert a.admit(2, 9, 12, c) == 8
        assert a.placement(2) == BlockTablePlacement(4, (0, 1, 2))
        a.check()
    else:
        with pytest.raises(AllocationError, match="3 blocks needed"):
            a.admit(2, 9, 12, c)


def test_append_round_declines_a_copy_and_takes_exactly_the_free_blocks():
    a = _paged()
    a.admit(1, 6, 32)
    a.fork(1, 2)  # block 1 shared and partly filled: a round would copy it
    assert a.append_round() is None
    assert a.round_crossers() is None
    assert a.plan_decode([1, 2], 3, None) is None
    a.append(2)  # the copy: nothing shared and partly filled now
    assert a.append_round() == 7 + 8
    b = _paged()
    b.admit(1, 4, 32)
    b.admit(2, 20, 32)  # 6 blocks held, 2 free; both at a block boundary
    assert b.round_crossers() == [1, 2]
    assert b.append_round() == 5 + 21  # exactly the 2 free blocks
    assert b.num_free_blocks == 0
    b.check()


def test_append_queries_default_to_one_token():
    a = _paged()
    a.admit(1, 7, 32)  # one empty slot left in its last block
    a.admit(2, 24, 32)  # no free block left
    assert a.blocks_needed_to_append(1) == 0
    assert a.can_append(1)
    assert not a.can_append(1, 2)
