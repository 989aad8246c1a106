"""Paged allocators' lazy rounds, worked out by hand: blocks that fill during a round are indexed (alone or in a round
where another sequence crosses), blocks go out in live order, the batched appends (`append_each`) and the decode
plans (`plan_decode`, `run_decode`, `apply_decode`) take or decline exactly the documented cases, where generated
mutants showed them untested.

Unless said otherwise: 8 blocks of 4 slots (capacity 32), free queue 0, 1, ..., 7 at the start. A sequence holding t
tokens whose base is b (t = b + round) crosses into a new block in the round that takes it from a multiple of 4, and
fills its last block in the round that takes it to one.
"""

import pytest

from sim.allocators.base import BlockTablePlacement, TokenContent
from sim.allocators.fast_paths import BlockDecodePlan
from sim.allocators.paged import PagedAllocator, PagedPrefixCache

G = ("group", 1)


def _paged(cls=PagedAllocator, **kw):
    return cls(num_blocks=8, block_size=4, max_model_len=32, **kw)


def _mem(a):
    return tuple(a.memory().as_dict().values())


def _table(*blocks):
    return BlockTablePlacement(4, blocks)


def _rounds(a, how, n):
    """n decode rounds of every live sequence (live order), by one of the round fast paths."""
    ids = a.live_sequences()
    if how == "append_round":
        for _ in range(n):
            assert a.append_round() is not None
    elif how == "apply_decode":
        plan = a.plan_decode(ids, n, None)
        assert plan.rounds == n
        a.apply_decode(plan, n)
    else:
        assert a.run_decode(ids, n, None).rounds == n


ROUNDS = pytest.mark.parametrize("how", ["append_round", "apply_decode", "run_decode"])


# --- blocks that fill in a round are indexed --------------------------------------------------------------------


@ROUNDS
def test_a_block_filled_by_rounds_is_cached_for_a_recompute(how):
    a = _paged(PagedPrefixCache)
    assert a.admit(1, 5, 32) == 0  # blocks 0 (full, keyed (("seq", 1), 0)) and 1 (1 token)
    _rounds(a, how, 3)  # 8 tokens: the third round fills block 1, and nothing crosses (one sequence alone)
    assert a.num_tokens(1) == 8
    assert a.placement(1) == _table(0, 1)
    a.check()
    a.free(1)  # both blocks stay cached; free queue 2, 3, 4, 5, 6, 7, 1, 0
    assert sorted(a.pool.cached_free_blocks()) == [0, 1]
    # recomputed after preemption: its own tokens 0..7 again, in blocks 0 and 1, hit; the 9th token takes block 2
    assert a.admit(1, 9, 32) == 8
    assert a.placement(1) == _table(0, 1, 2)
    a.check()


@ROUNDS
def test_a_block_filled_in_a_round_where_another_sequence_crosses_is_cached(how):
    a = _paged(PagedPrefixCache)
    a.admit(1, 5, 32)  # blocks 0, 1: fills block 1 in round 3
    a.admit(2, 2, 32)  # block 2: fills it in round 2, crosses into block 3 in round 3
    _rounds(a, how, 3)
    assert a.placement(1) == _table(0, 1)
    assert a.placement(2) == _table(2, 3)
    # 13 tokens in 4 blocks; sequence 2 (5 tokens) reserves the 3 empty slots of block 3
    assert _mem(a) == (13, 3, 0, 0, 16)
    a.check()
    a.free(1)  # free queue 4, 5, 6, 7, 1, 0
    assert a.admit(1, 9, 32) == 8  # blocks 0 and 1 hit
    assert a.placement(1) == _table(0, 1, 4)
    a.check()


def test_a_round_indexes_a_filled_block_and_completes_the_block_of_an_unindexed_crosser():
    a = _paged()  # no prefix cache: only sequences with shared content are indexed
    a.admit(1, 5, 32, TokenContent(((G, 4),)))  # indexed: blocks 0 (G's, keyed) and 1; fills block 1 in round 3
    a.admit(2, 6, 32)  # no content, not indexed: blocks 2, 3; fills block 3 in round 2, crosses in round 3
    for _ in range(3):
        assert a.append_round() is not None
    assert a.placement(1) == _table(0, 1)
    assert a.placement(2) == _table(2, 3, 4)
    assert sorted(a.pool.block_hash) == [0, 1]  # sequence 1's two full blocks; none of sequence 2's
    # 8 + 9 tokens in 5 blocks; sequence 2 reserves the 3 empty slots of block 4
    assert _mem(a) == (17, 3, 0, 0, 12)
    a.check()
    assert a.fill[2:4] == [4, 4]  # sequence 2's full blocks (no longer last blocks: their fill is exact)
    a.free(2)  # blocks 4, 3, 2 go back, holding 1 + 4 + 4 tokens, and their fill is cleared
    assert _mem(a) == (8, 0, 0, 0, 24)
    assert a.fill[2:5] == [0, 0, 0]
    a.check()


def test_a_filled_block_is_indexed_before_a_later_sequence_takes_a_block_in_the_same_round():
    # Appends in live order: sequence 1 fills its block (whose content is already cached in block 1, so it is not
    # indexed again), then sequence 2 crosses and takes block 1 from the front of the free queue, evicting that
    # content. Nothing indexes it afterwards, so a recompute of sequence 1 hits only its first block.
    def build():
        a = PagedPrefixCache(num_blocks=4, block_size=4, max_model_len=16)
        a.admit(1, 9, 16)  # blocks 0, 1 (full, keyed), 2
        a.free(1)  # free queue 3, 2, 1, 0; blocks 0 and 1 cached
        assert a.admit(1, 5, 16) == 4  # hits block 0, takes block 3: free queue 2, 1
        a.admit(2, 2, 16)  # takes block 2: free queue 1
        return a

    by_rounds, by_appends = build(), build()
    for _ in range(3):
        assert by_rounds.append_round() is not None
        by_appends.append(1)
        by_appends.append(2)
    for a in (by_rounds, by_appends):
        assert a.placement(1) == _table(0, 3)
        assert a.placement(2) == _table(2, 1)
        assert a.pool.num_evictions == 1
        assert sorted(a.pool.block_hash) == [0, 2]  # sequence 1's block 0 and sequence 2's block 2
        a.check()
        a.free(1)  # free queue 3, 0
        a.free(2)  # free queue 3, 0, 1, 2
        assert a.admit(1, 9, 16) == 4  # only block 0 hits; blocks 3 and 1 are taken for the rest
        assert a.placement(1) == _table(0, 3, 1)
        a.check()


def test_run_decode_indexes_filled_blocks_of_an_indexed_sequence_without_a_prefix_cache():
    a = _paged()
    own = ("seq", 1)
    # its content is tagged as its own tokens, so its later tokens continue the same run: block i is keyed (own, i)
    a.admit(1, 4, 32, TokenContent(((own, 4),)))
    assert a.run_decode([1], 4, None).rounds == 4  # crosses into block 1 and fills it
    assert a.placement(1) == _table(0, 1)
    assert sorted(a.pool.block_hash) == [0, 1]
    a.check()
    # a sequence whose first 9 tokens are sequence 1's maps both full blocks
    assert a.admit(2, 9, 32, TokenContent(((own, 9),))) == 8
    assert a.placement(2) == _table(0, 1, 2)
    a.check()


@pytest.mark.parametrize("cls", [PagedAllocator, PagedPrefixCache])
def test_run_decode_of_no_sequence_runs_every_round(cls):
    a = _paged(cls)
    want = a.plan_decode([], 3, None)
    assert want.rounds == 3
    got = a.run_decode([], 3, None)
    assert got.rounds == 3
    assert list(got.token_states) == [0, 0, 0]
    assert list(got.free) == [32, 32, 32]
    assert _mem(a) == (0, 0, 0, 0, 32)


# --- blocks go out in live order ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["append_round", "apply_decode"])
def test_a_round_sorts_the_crossers_of_a_bucket_reentered_out_of_order(how):
    a = _paged()
    a.admit(1, 2, 32)  # block 0, first in live order
    a.admit(2, 3, 32)  # block 1
    a.append(1)  # both hold 3 tokens; sequence 1 re-entered the round bookkeeping after 2 (nothing asks for crossers)
    _rounds(a, how, 2)  # round 2: both cross, 1 first
    assert a.placement(1) == _table(0, 2)
    assert a.placement(2) == _table(1, 3)
    a.check()


def test_a_child_comes_after_its_parent_and_before_later_admissions_in_live_order():
    a = _paged()
    a.admit(1, 4, 32)  # block 0
    a.fork(1, 2)  # shares block 0 (full: nothing to copy)
    a.admit(3, 4, 32)  # block 1
    a.append(2, 4)  # the child writes tokens 4..7 into block 2 (and re-enters the bookkeeping after 3)
    assert a.live_sequences() == [1, 2, 3]
    assert a.append_round() == 5 + 9 + 5  # all three cross, in live order: 1, 2, 3
    assert a.placement(1) == _table(0, 3)
    assert a.placement(2) == _table(0, 2, 4)
    assert a.placement(3) == _table(1, 5)
    a.check()


# --- append_each -------------------------------------------------------------------------------------------------


def test_append_each_in_the_given_order():
    a = _paged()
    a.admit(1, 4, 32)  # block 0
    a.admit(2, 4, 32)  # block 1
    assert a.append_each([2, 1]) == 10  # not live order: 2 appends (and takes a block) first
    assert a.placement(1) == _table(0, 3)
    assert a.placement(2) == _table(1, 2)
    a.check()


def test_append_each_of_every_live_sequence_in_live_order():
    a = _paged()
    a.admit(1, 4, 32)
    a.admit(2, 4, 32)
    assert a.append_each([1, 2]) == 10
    assert (a.num_tokens(1), a.num_tokens(2)) == (5, 5)
    assert a.placement(1) == _table(0, 2)
    assert a.placement(2) == _table(1, 3)
    a.check()


def test_append_each_of_some_sequences():
    a = _paged()
    a.admit(1, 5, 32)  # blocks 0, 1 (1 token: room left)
    a.admit(2, 4, 32)  # block 2
    assert a.append_each([1]) == 6
    assert (a.num_tokens(1), a.num_tokens(2)) == (6, 4)
    assert a.append_each([2, 2]) is None  # a repeated id
    assert a.append_each([9]) is None  # not live
    assert (a.num_tokens(1), a.num_tokens(2)) == (6, 4)
    a.check()


def test_append_each_takes_exactly_the_free_blocks():
    a = _paged()
    a.admit(1, 4, 32)  # block 0: its next token needs a block
    a.admit(2, 24, 32)  # blocks 1..6: one block left
    assert a.append_each([1]) == 5
    assert a.placement(1) == _table(0, 7)
    a.admit(3, 0, 32)  # no token, no block
    assert a.num_free_blocks == 0
    assert a.append_each([2]) is None  # needs a block: none left
    assert a.append_each([1]) == 6  # room in its last block: no block needed, none free
    assert a.num_tokens(2) == 24
    a.check()


def test_append_each_after_a_copy_on_write_only_looks_at_the_last_block():
    a = _paged()
    a.admit(1, 6, 32)  # blocks 0 (full), 1 (2 tokens)
    a.fork(1, 2)
    a.append(2)  # the child copies block 1 into block 2: block 0 stays shared, both last blocks are private
    assert a.take_copy_ops() == [(1, 2)]
    assert a.pool.ref_counts[:3] == [2, 1, 1]
    assert a.append_each([1]) == 7  # no copy needed: its last block (1) is its own
    assert a.append_each([2, 1]) == 8 + 8
    assert a.take_copy_ops() == []
    assert a.placement(1) == _table(0, 1)
    assert a.placement(2) == _table(0, 2)
    a.check()


def test_append_each_declines_a_copy_on_write():
    a = _paged()
    a.admit(1, 6, 32)
    a.fork(1, 2)  # block 1 shared and partly filled
    assert a.append_each([2]) is None
    assert a.num_tokens(2) == 6
    assert a.take_copy_ops() == []


# --- decode plans ------------------------------------------------------------------------------------------------


def test_run_decode_of_no_round_or_fewer():
    a = _paged()
    a.admit(1, 3, 10)
    assert a.run_decode([1], 0, None) is None
    assert a.run_decode([1], -1, None) is None
    assert a.num_tokens(1) == 3


def test_run_decode_of_one_round_is_the_one_pass_plan():
    a = _paged()
    a.admit(1, 4, 10)  # block 0; the round takes block 1
    plan = a.run_decode([1], 1, None)
    # live order and no fork: planned and applied in one pass, which returns the compact plan
    assert isinstance(plan, BlockDecodePlan)
    assert plan.rounds == 1
    assert list(plan.token_states) == [5]
    assert list(plan.reserved) == [3]  # 3 empty slots of block 1; 5 more tokens to come
    assert list(plan.free) == [24]
    assert a.placement(1) == _table(0, 1)
    a.check()


def test_run_decode_not_in_live_order_appends_in_the_given_order():
    a = _paged()
    a.admit(1, 4, 32)
    a.admit(2, 4, 32)
    plan = a.run_decode([2, 1], 1, None)
    assert plan.rounds == 1
    assert list(plan.token_states) == [10]
    assert a.placement(1) == _table(0, 3)
    assert a.placement(2) == _table(1, 2)
    a.check()


def test_apply_decode_not_in_live_order_appends_in_the_plan_order():
    a = _paged()
    a.admit(1, 4, 32)
    a.admit(2, 4, 32)
    plan = a.plan_decode([2, 1], 2, None)
    assert plan.rounds == 2
    a.apply_decode(plan, 2)
    assert (a.num_tokens(1), a.num_tokens(2)) == (6, 6)
    assert a.placement(1) == _table(0, 3)
    assert a.placement(2) == _table(1, 2)
    a.check()


def test_plan_decode_after_a_fork_with_nothing_to_copy():
    a = _paged()
    a.admit(1, 4, 32)  # block 0, full
    a.fork(1, 2)  # both hold block 0; their next tokens go into new blocks, nothing is copied
    plan = a.plan_decode([1, 2], 2, None)
    assert plan is not None
    assert plan.rounds == 2
    assert list(plan.token_states) == [6, 8]  # block 0's 4 tokens once, then 2 per round
    assert list(plan.reserved) == [6, 4]  # each new block's empty slots: 3 + 3, then 2 + 2
    assert list(plan.internal_fragmentation) == [0, 0]
    assert list(plan.free) == [20, 20]
    assert list(plan.unshared) == [16, 16]
    a.apply_decode(plan, 2)
    assert a.placement(1) == _table(0, 1)
    assert a.placement(2) == _table(0, 2)
    assert _mem(a) == (8, 4, 0, 0, 20)
    a.check()
