"""Address spaces: the error paths, edge cases and self-check assertions that generated mutants showed untested.

The `check()` tests corrupt one piece of an address space's private bookkeeping at a time, so that exactly one of
check's assertions is violated, and expect that assertion's message. Expected values are worked out by hand.
"""

import pytest

from sim.allocators.address_space import BuddySpace, FirstFitSpace

# --- BuddySpace -------------------------------------------------------------------------------------------------


def test_buddy_alloc_when_full_raises_memory_error():
    space = BuddySpace(8)
    assert space.alloc(8) == 0
    assert not space.can_alloc(1)
    with pytest.raises(MemoryError, match="no free buddy block of order 0"):
        space.alloc(1)
    with pytest.raises(MemoryError, match="of order 4"):
        BuddySpace(12).alloc(16)  # regions 8 + 4: no block of 16 anywhere


def test_buddy_empty_space_places_nothing():
    space = BuddySpace(0)
    assert space.free_extents() == []
    assert space.largest_placeable() == 0
    assert space.num_free() == 0
    space.check()


def test_buddy_largest_placeable_is_the_largest_region():
    assert BuddySpace(12).largest_placeable() == 8  # regions 8 + 4
    assert BuddySpace(7).largest_placeable() == 4  # regions 4 + 2 + 1


def test_buddy_check_passes_on_a_valid_state():
    space = BuddySpace(16)
    space.alloc(4)
    space.alloc(2)
    space.check()


def test_buddy_check_catches_an_overlap_that_balances_a_gap():
    space = BuddySpace(16)
    # free 0..4 and 8..16, allocated 0..4: 0..4 is covered twice and 4..8 not at all; the lengths still sum to 16,
    # every block is aligned and the free counter (12) matches the free blocks
    space._free = {2: {0}, 3: {8}}
    space._allocated = {0: 2}
    space._num_free = 12
    with pytest.raises(AssertionError, match="overlap or leave a gap at 4"):
        space.check()


def test_buddy_check_catches_a_misaligned_block():
    space = BuddySpace(16)
    # free blocks 0..2, 2..6, 6..8, 8..16 tile the space, but the 4-slot block at 2 is not aligned to 4
    space._free = {1: {0, 6}, 2: {2}, 3: {8}}
    with pytest.raises(AssertionError, match="buddy block at 2 of 4 slots is not aligned"):
        space.check()


def test_buddy_check_catches_blocks_that_fall_short_of_the_capacity():
    space = BuddySpace(16)
    assert space.alloc(8) == 0
    assert space.alloc(8) == 8
    del space._allocated[8]  # a leaked block: the pieces end at 8
    with pytest.raises(AssertionError, match="buddy blocks cover 8 of 16 slots"):
        space.check()


def test_buddy_check_catches_a_wrong_free_counter():
    space = BuddySpace(16)
    space.alloc(4)
    space._num_free += 1
    with pytest.raises(AssertionError, match="free-slot counter is wrong"):
        space.check()


def test_buddy_check_catches_unmerged_free_buddies():
    space = BuddySpace(16)
    # 0..4 and 4..8 are free buddies of order 2 inside the order-4 region: release would have merged them
    space._free = {2: {0, 4}, 3: {8}}
    with pytest.raises(AssertionError, match="free buddies at 0 .order 2. unmerged"):
        space.check()


# --- FirstFitSpace ----------------------------------------------------------------------------------------------


def test_first_fit_alloc_too_large_raises_memory_error():
    space = FirstFitSpace(8)
    assert space.alloc(5) == 0
    with pytest.raises(MemoryError, match="no free extent of 4 slots"):
        space.alloc(4)  # 3 slots left
    assert space.alloc(3) == 5  # exactly the rest
    with pytest.raises(MemoryError):
        space.alloc(1)


def test_first_fit_check_passes_on_a_valid_state():
    space = FirstFitSpace(10)
    a = space.alloc(3)
    space.alloc(3)
    space.release(a)
    space.check()


def test_first_fit_check_catches_an_empty_extent():
    space = FirstFitSpace(8)
    # an empty free extent at 0, then allocated 0..4 and free 4..8: everything else is consistent
    space._starts, space._lengths = [0, 4], [0, 4]
    space._allocated = {0: 4}
    space._num_free = 4
    with pytest.raises(AssertionError, match="empty extent at 0"):
        space.check()


def test_first_fit_check_catches_an_overlap_that_balances_a_gap():
    space = FirstFitSpace(8)
    # free 0..4 and allocated 0..4: 4..8 is covered by neither, yet the lengths sum to 8
    space._starts, space._lengths = [0], [4]
    space._allocated = {0: 4}
    space._num_free = 4
    with pytest.raises(AssertionError, match="overlap or leave a gap at 4"):
        space.check()


def test_first_fit_check_catches_extents_that_fall_short_of_the_capacity():
    space = FirstFitSpace(8)
    assert space.alloc(8) == 0
    space._allocated.clear()  # a leaked extent: nothing covers 0..8
    with pytest.raises(AssertionError, match="extents cover 0 of 8 slots"):
        space.check()


def test_first_fit_check_catches_uncoalesced_neighbours():
    space = FirstFitSpace(8)
    space._starts, space._lengths = [0, 4], [4, 4]  # 0..4 and 4..8 free but not merged
    with pytest.raises(AssertionError, match="adjacent free extents at 0 and 4"):
        space.check()


def test_first_fit_check_catches_a_wrong_free_counter():
    space = FirstFitSpace(8)
    space.alloc(3)
    space._num_free -= 1
    with pytest.raises(AssertionError, match="free-slot counter is wrong"):
        space.check()
