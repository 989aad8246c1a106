"""Contiguous allocators, worked out by hand: boundaries at exact capacity, error paths, counters, decode plans, the
reservation rules and check()'s assertions (by corrupting an allocator's state on purpose), where generated mutants
showed them untested.

Unless said otherwise: ContiguousOracle with 4 blocks of 4 slots (capacity 16) in a buddy space; Oracle reserves
max(1, final_len) slots, which the buddy space rounds up to a power of two.
"""

import pytest

from sim.allocators.address_space import BuddySpace, FirstFitSpace
from sim.allocators.base import AllocationError, ExtentPlacement
from sim.allocators.contiguous import ContiguousAllocator, ContiguousMax, ContiguousOracle, ContiguousPow2


def _oracle(**kw):
    return ContiguousOracle(num_blocks=4, block_size=4, max_model_len=16, **kw)


def _mem(a, *args):
    return tuple(a.memory(*args).as_dict().values())


# --- construction, names, reservations --------------------------------------------------------------------------


def test_address_space_choice():
    a = _oracle()
    assert a.address_space_name == "buddy" and isinstance(a.space, BuddySpace)
    b = _oracle(address_space="first-fit")
    assert b.address_space_name == "first-fit" and isinstance(b.space, FirstFitSpace)
    with pytest.raises(ValueError, match="unknown address space 'nope'; choose from buddy, first-fit"):
        _oracle(address_space="nope")
    assert _mem(a) == (0, 0, 0, 0, 16)
    assert ContiguousOracle.supports_fork is True


def test_base_class_has_no_reservation_rule():
    with pytest.raises(NotImplementedError):
        ContiguousAllocator(4, 4, 16).reservation(5)


def test_reservation_rules_and_names():
    m = ContiguousMax(4, 4, 16)
    assert (m.reservation(5), m.reservation(20)) == (16, 20)
    p = ContiguousPow2(4, 4, 16)
    assert p.reservation(124, 100) == 132  # the paper's example: 25 output tokens reserve 32
    assert p.reservation(10, 3) == 11  # 3 + next_pow2(8)
    assert p.reservation(9, 5) == 13  # 5 output tokens (9 - 5 + 1) reserve 8
    assert p.reservation(8, 5) == 9  # 4 output tokens reserve exactly 4
    assert p.reservation(10, 4) == 12  # 4 + next_pow2(7) = 4 + 8
    assert p.reservation(10) == 11  # unknown prompt: the whole sequence is prompt, 10 + next_pow2(1)
    assert p.reservation(10, 15) == 11  # a prompt beyond final_len counts as final_len
    assert p.reservation(10, -3) == 16  # a negative prompt counts as 0: next_pow2(11)
    o = _oracle()
    assert (o.reservation(5), o.reservation(0)) == (5, 1)
    names = {cls.name: cls.description for cls in (ContiguousMax, ContiguousPow2, ContiguousOracle)}
    assert list(names) == ["contiguous-max", "contiguous-pow2", "contiguous-oracle"]
    assert all(names.values())


def test_never_fits_at_exactly_the_largest_block():
    a = _oracle()
    assert a.never_fits(16) is None  # 16 placed in the one 16-slot region
    assert a.never_fits(17) == (
        "needs a contiguous reservation of 32 token slots; the largest the KV cache can place is 16"
    )
    big = ContiguousOracle(num_blocks=1000, block_size=4, max_model_len=8000)  # 4000 = 2048 + 1024 + ... regions
    assert big.never_fits(2048) is None
    assert big.never_fits(2049) == (
        "needs a contiguous reservation of 4,096 token slots; the largest the KV cache can place is 2,048"
    )


# --- admission --------------------------------------------------------------------------------------------------


def test_can_admit_token_count_bounds():
    a = _oracle()
    assert a.can_admit(1, 5, 5)  # all final_len tokens at once
    assert a.can_admit(1, 0, 5)
    assert not a.can_admit(1, 6, 5)
    assert not a.can_admit(1, -1, 5)
    assert a.can_admit(1, 16, 16)  # the whole capacity
    assert not a.can_admit(1, 17, 17)


def test_can_admit_tokens_up_to_the_placed_reservation():
    class Tiny(ContiguousAllocator):  # a user's rule reserving less than final_len: 3 slots, placed as 4
        def reservation(self, final_len, prompt_len=None):
            return 3

    t = Tiny(4, 4, 16)
    assert t.can_admit(1, 4, 6)
    assert not t.can_admit(1, 5, 6)


def test_admit_places_and_counts():
    a = _oracle()
    assert a.admit(1, 3, 5) == 0
    assert a.placement(1) == ExtentPlacement(0, 8)
    assert a.num_tokens(1) == 3
    assert _mem(a) == (3, 2, 3, 0, 8)  # 8 held: 3 tokens, 2 to come, 3 never filled
    assert not a.can_admit(1, 1, 1)  # live already
    with pytest.raises(AllocationError, match=r"cannot admit sequence 1 \(1 tokens, final 1\)"):
        a.admit(1, 1, 1)
    assert a.admit(2, 2, 2) == 0  # 2 slots: the 8-slot block at 8 splits, lower quarter
    assert a.placement(2) == ExtentPlacement(8, 2)
    assert _mem(a) == (5, 2, 3, 0, 6)
    a.check()


def test_admission_fails_when_the_space_is_full():
    a = _oracle()
    a.admit(1, 16, 16)
    assert not a.can_admit(2, 1, 1)
    with pytest.raises(AllocationError, match="cannot admit sequence 2"):
        a.admit(2, 1, 1)
    assert _mem(a) == (16, 0, 0, 0, 0)


# --- growth -----------------------------------------------------------------------------------------------------


def test_can_append_bounds():
    a = _oracle()
    a.admit(1, 3, 5)  # 8 slots held
    assert a.can_append(1)
    assert a.can_append(1, 5)  # exactly to the reservation
    assert not a.can_append(1, 6)
    assert a.can_append(1, 0)
    assert not a.can_append(1, -1)
    assert not a.can_append(99)
    a.admit(2, 8, 8)  # full reservation
    assert not a.can_append(2)  # the default is one token
    assert a.can_append(2, 0)


def test_append_counts_past_the_final_length():
    a = _oracle()
    a.admit(1, 3, 5)
    a.append(1, 2)
    assert a.num_tokens(1) == 5
    assert _mem(a) == (5, 0, 3, 0, 8)
    a.append(1)  # the default: one token, past final_len (up to the reservation)
    assert a.num_tokens(1) == 6
    assert _mem(a) == (6, 0, 2, 0, 8)
    a.append(1)
    assert _mem(a) == (7, 0, 1, 0, 8)
    with pytest.raises(AllocationError, match="sequence 1 cannot grow by 2 beyond its reservation"):
        a.append(1, 2)
    assert a.num_tokens(1) == 7
    assert a.can_append(1)  # the default, one token, fills the last slot
    a.check()


def test_append_each():
    a = _oracle()
    a.admit(1, 3, 5)  # held 8 at 0
    a.admit(2, 2, 2)  # held 2 at 8, full
    a.admit(3, 1, 2)  # held 2 at 10
    assert _mem(a) == (6, 3, 3, 0, 4)
    assert a.append_each([1]) == 4  # total of the new token counts
    assert _mem(a) == (7, 2, 3, 0, 4)
    assert a.append_each([1, 2]) is None  # 2 is full: nothing happens
    assert a.num_tokens(1) == 4
    assert a.append_each([1, 99]) is None
    assert a.append_each([1, 3]) == 5 + 2
    assert _mem(a) == (9, 0, 3, 0, 4)
    assert a.append_each([1]) == 6  # past final_len: reserved stays 0
    assert _mem(a) == (10, 0, 2, 0, 4)
    assert a.append_each([]) == 0
    a.check()


# --- free and fork ----------------------------------------------------------------------------------------------


def test_free():
    a = _oracle()
    a.admit(1, 3, 5)
    a.admit(2, 2, 4)
    a.append(1, 3)  # 6 tokens, one past final_len
    with pytest.raises(AllocationError, match="sequence 99 is not live"):
        a.free(99)
    a.free(1)
    assert _mem(a) == (2, 2, 0, 0, 12)
    assert a.space.free_extents() == [(0, 8), (12, 4)]
    a.free(2)
    assert _mem(a) == (0, 0, 0, 0, 16)
    assert a.space.free_extents() == [(0, 16)]
    a.check()


def test_fork_copies_into_its_own_reservation():
    a = _oracle()
    a.admit(1, 3, 5)
    assert a.can_fork(1, 2)
    a.fork(1, 2)
    assert a.placement(2) == ExtentPlacement(8, 8)
    assert a.num_tokens(2) == 3
    assert _mem(a) == (6, 4, 6, 0, 0)
    assert not a.can_fork(1, 3)  # no room left
    assert not a.can_fork(99, 3)
    with pytest.raises(AllocationError, match="cannot fork sequence 1 into 3"):
        a.fork(1, 3)
    a.check()


def test_fork_of_a_parent_grown_past_its_final_length():
    a = _oracle()
    a.admit(1, 3, 3)  # reservation 3, placed 4
    a.append(1)  # 4 tokens > final 3
    a.fork(1, 2)  # the child's final length is 4: it must hold all 4 tokens
    assert a.num_tokens(2) == 4
    assert a.placement(2) == ExtentPlacement(4, 4)
    assert _mem(a) == (8, 0, 0, 0, 8)
    a.check()


# --- memory with a waiting request ------------------------------------------------------------------------------


def test_external_fragmentation_for_the_next_request():
    a = _oracle()
    for i in (1, 2, 3):
        a.admit(i, 4, 4)  # at 0, 4, 8
    a.free(2)  # 4..8 free, its buddy 0..4 held: free blocks of 4 at 4 and 12
    assert _mem(a, 8) == (8, 0, 0, 8, 0)  # an 8-slot request fits in neither
    assert _mem(a, 4) == (8, 0, 0, 0, 8)
    assert _mem(a) == (8, 0, 0, 0, 8)


# --- decode plans -----------------------------------------------------------------------------------------------


def _plan_rows(plan):
    return [
        list(map(int, x))
        for x in (
            plan.token_states,
            plan.reserved,
            plan.internal_fragmentation,
            plan.external_fragmentation,
            plan.free,
            plan.unshared,
        )
    ]


def test_plan_decode_two_sequences():
    a = _oracle()
    a.admit(1, 3, 5)  # held 8, room 5
    a.admit(2, 2, 4)  # held 4 at 8, room 2
    plan = a.plan_decode([1, 2], 10, None)
    assert plan.seq_ids == [1, 2] and plan.rounds == 2
    # round 1: tokens 5 + 2 = 7, reserved (5-4) + (4-3) = 2; round 2: 9, 0; held 12, free 4
    assert _plan_rows(plan) == [[7, 9], [2, 0], [3, 3], [0, 0], [4, 4], [12, 12]]
    plan = a.plan_decode([1, 2], 1, 8)  # an 8-slot request waits: the free 4 slots are unusable
    assert plan.rounds == 1
    assert _plan_rows(plan) == [[7], [2], [3], [4], [0], [12]]


def test_plan_decode_past_the_final_length():
    a = _oracle()
    a.admit(1, 3, 5)  # room 5
    plan = a.plan_decode([1], 4, None)
    assert plan.rounds == 4
    assert _plan_rows(plan) == [[4, 5, 6, 7], [1, 0, 0, 0], [3, 3, 2, 1], [0] * 4, [8] * 4, [8] * 4]


def test_plan_decode_declines():
    a = _oracle()
    a.admit(1, 3, 5)
    a.admit(2, 2, 4)
    assert a.plan_decode([1, 2], 0, None) is None
    assert a.plan_decode([1, 2], -1, None) is None
    assert a.plan_decode([1], 5, None) is None  # not every live sequence
    assert a.plan_decode([1, 99], 5, None) is None


def test_plan_decode_with_no_room():
    a = _oracle()
    a.admit(1, 4, 4)  # full reservation
    plan = a.plan_decode([1], 3, None)
    assert plan.rounds == 0
    assert _plan_rows(plan) == [[], [], [], [], [], []]


def test_apply_decode():
    a = _oracle()
    a.admit(1, 3, 5)
    plan = a.plan_decode([1], 4, None)
    for bad in (5, -1):
        with pytest.raises(AllocationError, match=f"cannot apply {bad} rounds of a 4-round plan"):
            a.apply_decode(plan, bad)
    a.apply_decode(plan, 0)
    assert _mem(a) == (3, 2, 3, 0, 8)
    a.apply_decode(plan, 3)
    assert a.num_tokens(1) == 6
    assert _mem(a) == (6, 0, 2, 0, 8)  # round 3 of the plan
    plan = a.plan_decode([1], 4, None)
    assert plan.rounds == 2
    a.apply_decode(plan, 2)  # the whole plan; already past final_len: reserved stays 0
    assert a.num_tokens(1) == 8
    assert _mem(a) == (8, 0, 0, 0, 8)
    a.check()


# --- check() ----------------------------------------------------------------------------------------------------


def _two():
    a = _oracle()
    a.admit(1, 3, 5)  # 0..8
    a.admit(2, 8, 8)  # 8..16: tokens == held, ends at the capacity
    a.check()
    return a


def test_check_passes_at_the_edges():
    a = _oracle()
    a.admit(1, 0, 4)  # no tokens yet, at 0
    a.admit(2, 4, 4)
    a.append(2, 0)
    a.admit(3, 8, 8)  # ends at 16
    a.check()
    b = _oracle()
    b.admit(1, 3, 3)
    b.append(1)  # past final_len
    b.check()


def test_check_catches_extents_that_differ_from_the_space():
    a = _two()
    a._seqs[1].start = 4
    with pytest.raises(AssertionError, match="sequence extents differ from the address space's"):
        a.check()


@pytest.mark.parametrize("tokens", [9, -1])
def test_check_catches_tokens_outside_the_reservation(tokens):
    a = _two()
    a._seqs[1].tokens = tokens
    with pytest.raises(AssertionError, match=f"sequence 1 holds {tokens} tokens in 8 slots"):
        a.check()


def test_check_catches_an_extent_beyond_the_capacity():
    a = _two()
    a.capacity_tokens = 12  # sequence 2 ends at 16
    with pytest.raises(AssertionError, match="sequence 2 out of bounds"):
        a.check()


@pytest.mark.parametrize(
    ("counter", "message"),
    [("_tokens", "token counter is wrong"), ("_held", "held counter is wrong"), ("_unfilled", "^$")],
)
def test_check_catches_wrong_counters(counter, message):
    a = _two()
    setattr(a, counter, getattr(a, counter) + 1)
    with pytest.raises(AssertionError, match=message):
        a.check()


def test_check_catches_held_plus_free_not_the_capacity():
    a = _two()
    a.capacity_tokens = 20  # every extent is in bounds, but 16 held + 0 free != 20
    with pytest.raises(AssertionError, match="held . free != capacity"):
        a.check()


def test_check_runs_the_space_check():
    a = _two()
    a.space._num_free += 1
    with pytest.raises(AssertionError, match="free-slot counter is wrong"):
        a.check()
