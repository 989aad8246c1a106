"""Allocator memory accounting and placements, worked out on paper."""

import pytest

from sim.allocators import (
    AllocationError,
    ContiguousMax,
    ContiguousOracle,
    ContiguousPow2,
    MemoryBreakdown,
    PagedAllocator,
)


def test_issue_example_500_tokens_at_max_length_2048():
    # contiguous-max holds 2,048 slots for a 500-token sequence: 500 / 2048 = 24.4% token states
    cmax = ContiguousMax(num_blocks=128, block_size=16, max_model_len=2048)
    cmax.admit(0, 500, 500)
    m = cmax.memory()
    assert m == MemoryBreakdown(500, 0, 1548, 0, 0)
    assert m.token_states / (m.token_states + m.reserved + m.internal_fragmentation) == pytest.approx(0.244, abs=1e-3)
    # paged with 16-token blocks holds 32 blocks = 512 slots: 500 / 512 = 97.7%
    paged = PagedAllocator(num_blocks=128, block_size=16, max_model_len=2048)
    paged.admit(0, 500, 500)
    m = paged.memory()
    assert m == MemoryBreakdown(500, 0, 12, 0, 2048 - 512)
    assert 500 / 512 == pytest.approx(0.977, abs=1e-3)


def test_paged_blocks_on_demand_and_reserved_slack():
    a = PagedAllocator(num_blocks=4, block_size=4, max_model_len=100)
    a.admit(7, 5, 7)  # 2 blocks; final length 7 will fill 2 of the 3 empty slots
    assert a.placement(7).block_table == (0, 1)
    assert a.memory() == MemoryBreakdown(5, 2, 1, 0, 8)
    a.append(7, 3)  # 8 tokens: still 2 blocks (final length exceeded by the caller is allowed)
    assert a.memory() == MemoryBreakdown(8, 0, 0, 0, 8)
    a.append(7)  # 9th token crosses into a third block
    assert a.placement(7).block_table == (0, 1, 2)
    assert a.placement(7).slot(8) == 2 * 4 + 0
    assert a.num_free_blocks == 1
    assert not a.can_append(7, 8)  # would need 2 more blocks, 1 free
    with pytest.raises(AllocationError):
        a.append(7, 8)
    a.free(7)
    assert a.memory() == MemoryBreakdown(0, 0, 0, 0, 16)
    a.check()


def test_paged_admission_needs_every_block():
    a = PagedAllocator(num_blocks=2, block_size=4, max_model_len=100)
    assert a.can_admit(0, 8, 8)
    assert not a.can_admit(0, 9, 9)  # 9 tokens need 3 blocks
    assert a.never_fits(9) == "needs 3 blocks; the KV cache has 2"
    assert a.never_fits(8) is None


def test_contiguous_reservations():
    # capacity 64 slots, max length 32
    cmax = ContiguousMax(16, 4, 32)
    cpow2 = ContiguousPow2(16, 4, 32)
    oracle = ContiguousOracle(16, 4, 32, address_space="first-fit")
    for alloc in (cmax, cpow2, oracle):
        alloc.admit(1, 10, 13)
    assert cmax.placement(1).length == 32
    assert cpow2.placement(1).length == 16
    assert oracle.placement(1).length == 13
    # 10 tokens, 3 still to come, the rest never filled
    assert cmax.memory() == MemoryBreakdown(10, 3, 19, 0, 32)
    assert cpow2.memory() == MemoryBreakdown(10, 3, 3, 0, 48)
    assert oracle.memory() == MemoryBreakdown(10, 3, 0, 0, 51)
    # oracle under the buddy address space is rounded to a power of two by the address space itself
    buddy_oracle = ContiguousOracle(16, 4, 32)
    buddy_oracle.admit(1, 10, 13)
    assert buddy_oracle.placement(1).length == 16
    # a sequence cannot grow beyond its reservation
    assert oracle.can_append(1, 3) and not oracle.can_append(1, 4)


def test_contiguous_external_fragmentation_depends_on_the_next_request():
    a = ContiguousOracle(4, 4, 16, address_space="first-fit")  # 16 slots
    a.admit(0, 4, 4)  # 0..4
    a.admit(1, 4, 4)  # 4..8
    a.admit(2, 4, 4)  # 8..12
    a.free(0)
    a.free(2)  # holes: 0..4 and 8..16
    assert a.memory(next_final_len=6) == MemoryBreakdown(4, 0, 0, 4, 8)  # the 4-slot hole cannot take 6
    assert a.memory(next_final_len=9) == MemoryBreakdown(4, 0, 0, 12, 0)  # no hole takes 9
    assert a.memory(next_final_len=4) == MemoryBreakdown(4, 0, 0, 0, 12)
    assert a.memory() == MemoryBreakdown(4, 0, 0, 0, 12)  # nothing waits
    a.check()


def test_contiguous_never_fits():
    a = ContiguousMax(4, 4, 32)  # 16 slots but reserves 32
    assert "32" in a.never_fits(5)
    b = ContiguousPow2(6, 4, 100)  # 24 slots: buddy regions 16 + 8
    assert b.never_fits(15, 14) is None  # prompt 14 + 2 outputs: 14 + 2 = 16 slots
    assert b.never_fits(15, 13) is not None  # prompt 13 + 3 outputs: 13 + 4 = 17, which the buddy rounds to 32


def test_operations_on_unknown_sequences_fail_cleanly():
    for alloc in (PagedAllocator(4, 4, 16), ContiguousMax(4, 4, 16)):
        with pytest.raises(AllocationError):
            alloc.free(3)
        assert not alloc.can_append(3)
        alloc.admit(3, 1, 2)
        assert not alloc.can_admit(3, 1, 2)  # already live
