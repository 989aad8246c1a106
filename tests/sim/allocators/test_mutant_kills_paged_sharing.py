"""Paged allocators after lazy rounds, worked out by hand: what a fork copies and which tokens a child owns, writes
into a last block whose fill was left stale by rounds, reserved slots of a shared partly filled block, which blocks
are indexed, and the fill of blocks that go back to the free queue, where generated mutants showed them untested.

Unless said otherwise: 8 blocks of 4 slots (capacity 32), free queue 0, 1, ..., 7 at the start.
"""

from sim.allocators.base import BlockTablePlacement, TokenContent
from sim.allocators.paged import PagedAllocator, PagedPrefixCache


def _paged(cls=PagedAllocator, **kw):
    return cls(num_blocks=8, block_size=4, max_model_len=32, **kw)


def _mem(a):
    return tuple(a.memory().as_dict().values())


def _table(*blocks):
    return BlockTablePlacement(4, blocks)


# --- forks after lazy rounds ---------------------------------------------------------------------------------------


def test_fork_without_sharing_copies_the_tokens_written_by_rounds():
    a = _paged(sharing=False)
    a.admit(1, 1, 32)  # block 0
    assert a.append_round() == 2
    assert a.append_round() == 3
    a.fork(1, 2)  # a private copy of block 0, which holds 3 tokens
    assert a.placement(2) == _table(1)
    assert a.take_copy_ops() == [(0, 1)]
    # 3 + 3 tokens in 2 blocks; each reserves its last empty slot
    assert _mem(a) == (6, 2, 0, 0, 24)
    a.check()
    a.free(1)
    assert _mem(a) == (3, 1, 0, 0, 28)
    a.check()


def test_a_child_forked_after_rounds_owns_only_the_tokens_it_writes_itself():
    a = _paged(PagedPrefixCache)
    a.admit(1, 5, 32)  # blocks 0 (full, keyed (("seq", 1), 0)) and 1
    a.append_round()
    a.append_round()  # 7 tokens, all sequence 1's own
    a.fork(1, 2)  # the child holds sequence 1's 7 tokens
    a.append(2)  # its own token 7: copies block 1 into block 2, which it fills: parent's 4..6 and its own 7
    assert a.take_copy_ops() == [(1, 2)]
    assert a.placement(2) == _table(0, 2)
    a.check()
    a.free(2)  # block 2 stays cached
    # the child recomputed: 7 tokens of sequence 1, then its own. Both full blocks hit (block 0 is still held by 1)
    assert a.admit(2, 9, 32, TokenContent(((("seq", 1), 7),))) == 8
    assert a.placement(2) == _table(0, 2, 3)
    a.check()


def test_a_parent_and_its_child_index_the_different_tokens_they_write_after_a_fork():
    a = _paged()
    a.admit(1, 4, 32, TokenContent(((("group", 1), 4),)))  # block 0 = the group's 4 tokens (indexed: shared content)
    a.append(1, 4)  # its own tokens 4..7 fill block 1 (indexed)
    a.fork(1, 2)  # both at 8 tokens: blocks 0 and 1 shared, full
    a.append(1, 4)  # the parent's own tokens 8..11: block 2
    a.append(2, 4)  # the child's own tokens 8..11: block 3, other content than block 2, so indexed as well
    assert a.placement(1) == _table(0, 1, 2)
    assert a.placement(2) == _table(0, 1, 3)
    assert sorted(a.pool.block_hash) == [0, 1, 2, 3]
    assert len(set(a.pool.block_hash.values())) == 4
    a.check()


# --- writes into a last block whose fill is stale ----------------------------------------------------------------


def test_an_append_after_rounds_fills_the_rest_of_the_last_block():
    a = _paged(sharing=False)
    a.admit(1, 1, 32)  # block 0
    a.append_round()
    a.append_round()  # 3 tokens in block 0
    a.append(1, 2)  # token 3 completes block 0, token 4 goes into block 1
    assert a.placement(1) == _table(0, 1)
    assert a.fill[0] == 4  # no longer a last block: exact
    a.check()
    a.fork(1, 2)  # copies both blocks: 4 + 1 tokens
    assert a.take_copy_ops() == [(0, 2), (1, 3)]
    assert _mem(a) == (10, 6, 0, 0, 16)
    a.check()


# --- reserved slots of a shared partly filled block ----------------------------------------------------------------


def test_a_shared_partly_filled_block_reserves_what_its_holders_still_write():
    a = _paged()
    a.admit(1, 6, 7)  # blocks 0, 1 (2 tokens); one token to come: 1 of block 1's 2 empty slots is reserved
    assert _mem(a) == (6, 1, 1, 0, 24)
    a.fork(1, 2)  # the child will also write one more token: still 1 reserved slot (the block is shared)
    assert _mem(a) == (6, 1, 1, 0, 24)
    a.check()
    a.append(2)  # the child copies block 1 into block 2 and finishes there: block 1 still reserves 1 slot for 1
    assert _mem(a) == (9, 1, 2, 0, 20)
    a.check()


# --- which blocks are indexed --------------------------------------------------------------------------------------


def test_an_unindexed_sequence_that_fills_a_block_by_appending_is_not_indexed():
    a = _paged()
    a.admit(1, 3, 32)  # no content: not indexed without a prefix cache
    a.append(1, 2)  # block 0 full
    assert a.pool.block_hash == {}
    # content naming sequence 1's tokens finds nothing to map
    assert a.admit(2, 5, 32, TokenContent(((("seq", 1), 4),))) == 0
    assert a.hit_tokens == 0
    assert a.placement(2) == _table(2, 3)
    a.check()


def test_blocks_needed_to_shrink_is_zero():
    a = _paged()
    a.admit(1, 8, 32)  # blocks 0, 1
    assert a.blocks_needed_to_append(1, -4) == 0
    assert a.blocks_needed_to_append(1, -8) == 0
    assert not a.can_append(1, -4)


# --- the fill of blocks that go back to the free queue ------------------------------------------------------------


def test_freed_blocks_keep_their_fill_only_while_cached():
    a = _paged(PagedPrefixCache)
    a.admit(1, 6, 32)  # blocks 0 (full, indexed), 1 (2 tokens)
    a.free(1)
    assert a.fill[:2] == [4, 0]  # block 0 cached with its 4 tokens; block 1 holds nothing
    assert a.pool.cached_free_blocks() == [0]
    a.drop_cache()
    assert a.fill[:2] == [0, 0]
    assert a.pool.cached_free_blocks() == []
    assert a.admit(1, 6, 32) == 0  # nothing to hit any more
    a.check()


def test_freed_blocks_of_a_forked_sequence_hold_nothing():
    a = _paged()
    a.admit(1, 6, 32)  # blocks 0, 1
    a.fork(1, 2)
    a.append(2)  # the child copies block 1 into block 2
    a.free(2)  # block 2 goes back (block 0 is still held by 1)
    assert (a.fill[0], a.fill[2]) == (4, 0)  # block 1 is 1's last block, whose fill may be stale: not asserted
    assert _mem(a) == (6, 2, 0, 0, 24)
    a.check()


def test_the_prefix_cache_describes_itself():
    assert PagedPrefixCache.description != PagedAllocator.description
    assert "cached" in PagedPrefixCache.description
