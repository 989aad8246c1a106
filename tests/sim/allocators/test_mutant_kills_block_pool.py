"""BlockPool, method by method, in both modes (with and without `retain_cached`): free-queue order, reference counts,
the hash index, evictions and every refusal, where generated mutants showed them untested. Expected values are
worked out by hand from the docstrings (the free queue is least recently freed first; `allocate` takes the front).
"""

import pytest

from sim.allocators.base import AllocationError
from sim.allocators.block_pool import BlockPool

BOTH = pytest.mark.parametrize("retain", [False, True], ids=["plain", "retain"])


def _index(pool):
    return pool.block_hash, pool.hash_block


@BOTH
def test_fresh_pool(retain):
    pool = BlockPool(4, retain_cached=retain)
    assert pool.num_blocks == 4
    assert pool.retain_cached is retain
    assert pool.num_free_blocks == 4
    assert pool.free_block_ids() == [0, 1, 2, 3]
    assert pool.cached_free_blocks() == []
    assert pool.ref_counts == [0, 0, 0, 0]
    assert _index(pool) == ({}, {})
    assert pool.num_evictions == 0


@BOTH
def test_allocate_takes_the_front_until_empty(retain):
    pool = BlockPool(3, retain_cached=retain)
    assert pool.allocate() == 0
    assert pool.ref_counts == [1, 0, 0]
    assert pool.free_block_ids() == [1, 2]
    assert [pool.allocate(), pool.allocate()] == [1, 2]
    assert pool.ref_counts == [1, 1, 1]
    assert pool.num_free_blocks == 0
    with pytest.raises(AllocationError, match="no free KV block"):
        pool.allocate()


@BOTH
def test_allocate_many_up_to_exactly_the_free_blocks(retain):
    pool = BlockPool(5, retain_cached=retain)
    assert pool.allocate_many(2) == [0, 1]
    assert pool.ref_counts == [1, 1, 0, 0, 0]
    assert pool.allocate_many(3) == [2, 3, 4]  # exactly what is free
    assert pool.ref_counts == [1, 1, 1, 1, 1]
    assert pool.allocate_many(0) == []
    with pytest.raises(AllocationError, match="1 KV blocks wanted, 0 free"):
        pool.allocate_many(1)


def test_retained_blocks_are_evicted_when_allocated_again():
    pool = BlockPool(4, retain_cached=True)
    assert pool.allocate_many(4) == [0, 1, 2, 3]
    pool.register(0, "x")
    pool.register(1, "y")
    assert pool.release_many([1, 0, 2]) == [1, 0, 2]
    assert pool.free_block_ids() == [1, 0, 2]
    assert pool.cached_free_blocks() == [1, 0]  # 2 holds no indexed content
    assert _index(pool) == ({0: "x", 1: "y"}, {"x": 0, "y": 1})  # freed, still cached
    assert pool.allocate() == 1  # the front: evicts "y"
    assert pool.ref_counts[1] == 1
    assert _index(pool) == ({0: "x"}, {"x": 0})
    assert pool.num_evictions == 1
    assert pool.allocate_many(2) == [0, 2]  # evicts "x"; 2 had nothing to evict
    assert pool.ref_counts == [1, 1, 1, 1]
    assert _index(pool) == ({}, {})
    assert pool.num_evictions == 2


def test_allocating_an_uncached_block_with_a_nonempty_index_evicts_nothing():
    pool = BlockPool(3, retain_cached=True)
    assert pool.allocate() == 0
    pool.register(0, "kept")  # in use: never evicted by allocation
    assert pool.allocate() == 1
    assert pool.allocate_many(1) == [2]
    assert _index(pool) == ({0: "kept"}, {"kept": 0})
    assert pool.num_evictions == 0


def test_release_many_without_a_cache():
    pool = BlockPool(4)
    assert pool.allocate_many(3) == [0, 1, 2]
    pool.incref(1)
    assert pool.ref_counts == [1, 2, 1, 0]
    assert pool.release_many([0, 1, 2]) == [0, 2]  # 1 still has a reference
    assert pool.ref_counts == [0, 1, 0, 0]
    assert pool.free_block_ids() == [3, 0, 2]
    assert pool.release_many([1]) == [1]
    assert pool.free_block_ids() == [3, 0, 2, 1]
    assert pool.release_many([]) == []
    with pytest.raises(AssertionError, match="decref of free block 1"):
        pool.release_many([1])


def test_release_many_without_a_cache_unindexes_freed_blocks():
    pool = BlockPool(2)
    assert pool.allocate_many(2) == [0, 1]
    pool.register(0, "a")
    pool.register(1, "b")
    assert pool.release_many([0]) == [0]
    assert _index(pool) == ({1: "b"}, {"b": 1})
    assert pool.free_block_ids() == [0]


def test_release_many_with_a_cache_keeps_the_content():
    pool = BlockPool(3, retain_cached=True)
    assert pool.allocate_many(3) == [0, 1, 2]
    pool.register(2, "c")
    assert pool.release_many([2, 0]) == [2, 0]
    assert pool.ref_counts == [0, 1, 0]
    assert pool.free_block_ids() == [2, 0]
    assert pool.cached_free_blocks() == [2]
    assert _index(pool) == ({2: "c"}, {"c": 2})


@BOTH
def test_release_exclusive(retain):
    pool = BlockPool(3, retain_cached=retain)
    assert pool.allocate_many(3) == [0, 1, 2]
    pool.release_exclusive([2, 0])
    assert pool.ref_counts == [0, 1, 0]
    assert pool.free_block_ids() == [2, 0]
    assert pool.allocate() == 2


def test_incref_and_decref_without_a_cache():
    pool = BlockPool(2)
    assert pool.allocate() == 0
    pool.incref(0)
    assert pool.ref_counts == [2, 0]
    assert pool.decref(0) is False
    assert pool.ref_counts == [1, 0]
    assert pool.free_block_ids() == [1]
    assert pool.decref(0) is True
    assert pool.ref_counts == [0, 0]
    assert pool.free_block_ids() == [1, 0]
    with pytest.raises(AssertionError, match="decref of free block 0"):
        pool.decref(0)
    with pytest.raises(AssertionError, match="reference to free block 0 without a prefix cache"):
        pool.incref(0)


def test_decref_without_a_cache_unindexes_the_freed_block():
    pool = BlockPool(2)
    assert pool.allocate() == 0
    pool.register(0, "a")
    assert pool.decref(0) is True
    assert _index(pool) == ({}, {})
    assert pool.free_block_ids() == [1, 0]


def test_incref_of_a_cached_free_block_is_a_hit():
    pool = BlockPool(3, retain_cached=True)
    assert pool.allocate_many(3) == [0, 1, 2]
    pool.register(1, "h")
    assert pool.decref(1) is True
    assert pool.free_block_ids() == [1]
    assert pool.cached_free_blocks() == [1]
    pool.incref(1)  # the hit takes it out of the free queue, content and all
    assert pool.ref_counts == [1, 1, 1]
    assert pool.free_block_ids() == []
    assert _index(pool) == ({1: "h"}, {"h": 1})
    assert pool.num_evictions == 0


def test_register_only_new_content_on_unindexed_blocks_and_unregister():
    pool = BlockPool(3)
    pool.register(0, "a")
    assert _index(pool) == ({0: "a"}, {"a": 0})
    pool.register(1, "a")  # that content is already indexed (at 0)
    pool.register(0, "b")  # that block is already indexed (as "a")
    assert _index(pool) == ({0: "a"}, {"a": 0})
    pool.register(1, "b")
    assert _index(pool) == ({0: "a", 1: "b"}, {"a": 0, "b": 1})
    pool.unregister(0)
    assert _index(pool) == ({1: "b"}, {"b": 1})
    pool.unregister(0)  # not indexed: nothing to do
    pool.unregister(2)
    assert _index(pool) == ({1: "b"}, {"b": 1})


def test_drop_cache_forgets_only_free_blocks():
    pool = BlockPool(3, retain_cached=True)
    assert pool.allocate_many(3) == [0, 1, 2]
    pool.register(0, "a")
    pool.register(1, "b")
    assert pool.release_many([0]) == [0]
    pool.drop_cache()
    assert _index(pool) == ({1: "b"}, {"b": 1})  # 1 is in use: kept
    assert pool.free_block_ids() == [0]
    assert pool.cached_free_blocks() == []


@BOTH
def test_reorder_free(retain):
    pool = BlockPool(4, retain_cached=retain)
    assert pool.allocate() == 0
    pool.reorder_free([3, 1, 2])
    assert pool.free_block_ids() == [3, 1, 2]
    assert pool.num_free_blocks == 3
    assert pool.allocate() == 3
    for bad in ([1, 9], [1, 2, 2], [1]):
        with pytest.raises(ValueError, match="needs a permutation of the free blocks"):
            pool.reorder_free(bad)
    assert pool.free_block_ids() == [1, 2]


def test_front_popper_only_without_a_cache():
    pool = BlockPool(3)
    pop = pool.front_popper()
    assert pop() == 0
    assert pool.free_block_ids() == [1, 2]
    with pytest.raises(ValueError, match="front_popper is for pools without a prefix cache"):
        BlockPool(3, retain_cached=True).front_popper()


def test_free_before_cached_counts_up_to_the_first_cached_block():
    """The blocks the next allocations take before one evicts cached content (the host tier's fast-forward cap)."""
    pool = BlockPool(6, retain_cached=True)
    blocks = pool.allocate_many(6)  # the free queue is empty
    assert pool.free_before_cached(10) == 0
    pool.register(blocks[2], "h2")
    pool.release_many(blocks[:4])  # free queue: 0, 1, 2 (cached), 3
    assert pool.free_before_cached(10) == 2
    assert pool.free_before_cached(2) == 2
    assert pool.free_before_cached(1) == 1
    assert pool.free_before_cached(0) == 0
    pool.release_many([blocks[4]])
    pool.allocate_many(2)  # takes 0 and 1: the cached block 2 is now at the front
    assert pool.free_before_cached(10) == 0
    plain = BlockPool(4)  # nothing is ever cached: every free block counts, up to the limit
    assert plain.free_before_cached(3) == 3
    assert plain.free_before_cached(10) == 4
