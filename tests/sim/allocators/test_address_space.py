"""Buddy and first-fit address spaces, worked out by hand."""

from sim.allocators.address_space import BuddySpace, FirstFitSpace


def test_buddy_regions_of_a_non_power_of_two_capacity():
    space = BuddySpace(15_728)  # 8192 + 4096 + 2048 + 1024 + 256 + 64 + 32 + 16
    assert space.free_extents() == [
        (0, 8192),
        (8192, 4096),
        (12288, 2048),
        (14336, 1024),
        (15360, 256),
        (15616, 64),
        (15680, 32),
        (15712, 16),
    ]
    assert space.largest_placeable() == 8192
    # 2048 slots: the smallest free block that holds it is the 2048 region itself
    assert space.alloc(2048) == 12288
    # next 2048: split the 4096 region at 8192, keep its lower half
    assert space.alloc(2048) == 8192
    assert (10240, 2048) in space.free_extents()
    space.check()


def test_buddy_rounds_up_and_merges_only_true_buddies():
    space = BuddySpace(16)
    assert space.placed_size(3) == 4
    starts = [space.alloc(4) for _ in range(4)]
    assert starts == [0, 4, 8, 12]
    space.release(0)
    space.release(8)
    # 0 and 8 are free but not buddies (0's buddy is 4): an 8-slot request cannot be placed
    assert not space.can_alloc(8)
    assert space.unusable_free(8) == 8
    assert space.unusable_free(4) == 0
    space.release(4)  # 0+4 merge to 8 at 0; 0..8 and 8..12 are not buddies of equal order
    assert space.free_extents() == [(0, 8), (8, 4)]
    space.release(12)  # 8+12 merge to 8 at 8, then 0 and 8 merge to 16
    assert space.free_extents() == [(0, 16)]
    space.check()


def test_first_fit_places_low_and_coalesces():
    space = FirstFitSpace(10)
    a, b, c = space.alloc(4), space.alloc(2), space.alloc(4)
    assert (a, b, c) == (0, 4, 6)
    space.release(a)
    space.release(c)
    assert space.free_extents() == [(0, 4), (6, 4)]
    assert space.unusable_free(5) == 8  # both holes too small for 5
    assert not space.can_alloc(5)
    assert space.alloc(3) == 0
    space.release(b)  # 3..6 (1 free + 2 freed) joins 6..10
    assert space.free_extents() == [(3, 7)]
    space.check()
