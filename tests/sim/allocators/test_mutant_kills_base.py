"""The allocator contract (sim/allocators/base.py): records, placements, argument checks and the defaults a minimal
allocator inherits, pinned down where generated mutants showed them untested. Expected values are worked out by hand.
"""

import inspect

import pytest

from sim.allocators import REGISTRY
from sim.allocators.base import (
    MEMORY_CATEGORIES,
    BlockTablePlacement,
    ExtentPlacement,
    KVAllocator,
    MemoryBreakdown,
    TokenContent,
)


class _Minimal(KVAllocator):
    """Only the ten required methods, so every optional attribute and method is the contract's default."""

    def __init__(self, num_blocks: int = 3, block_size: int = 5, max_model_len: int = 11):
        super().__init__(num_blocks, block_size, max_model_len)
        self._seqs = {7: None, 2: None}

    def never_fits(self, final_len, prompt_len=None):
        return None

    def can_admit(self, seq_id, num_tokens, final_len, content=None):
        return False

    def admit(self, seq_id, num_tokens, final_len, content=None):
        return 0

    def can_append(self, seq_id, num_tokens=1):
        return False

    def append(self, seq_id, num_tokens=1):
        return None

    def free(self, seq_id):
        return None

    def num_tokens(self, seq_id):
        return 0

    def placement(self, seq_id):
        return ExtentPlacement(0, 0)

    def memory(self, next_final_len=None, next_prompt_len=None):
        # distinct powers of two, so that any wrong sum of fields shows: held = 1 + 2 + 4 = 7
        return MemoryBreakdown(token_states=1, reserved=2, internal_fragmentation=4, external_fragmentation=0, free=8)

    def check(self):
        return None


def test_memory_breakdown_total_and_fields():
    m = MemoryBreakdown(1, 2, 4, 8, 16)
    assert m.total == 31
    assert m.as_dict() == {
        "token_states": 1,
        "reserved": 2,
        "internal_fragmentation": 4,
        "external_fragmentation": 8,
        "free": 16,
    }
    assert tuple(m.as_dict()) == MEMORY_CATEGORIES


def test_block_table_slot():
    p = BlockTablePlacement(block_size=4, block_table=(7, 2))
    assert p.slot(0) == 28  # block 7, offset 0
    assert p.slot(5) == 9  # block 2 (the second logical block), offset 1


def test_extent_slot_inside_and_at_both_ends():
    p = ExtentPlacement(start=10, length=4)
    assert p.slot(0) == 10
    assert p.slot(3) == 13
    with pytest.raises(IndexError, match="position 4 outside the reservation of 4 slots"):
        p.slot(4)
    with pytest.raises(IndexError, match="position -1 outside"):
        p.slot(-1)


def test_token_content_defaults_to_all_unique():
    assert TokenContent().runs == ()


def test_constructor_rejects_non_positive_sizes_and_accepts_one():
    for num_blocks, block_size in ((0, 5), (3, 0), (-1, 5), (3, -1), (0, 0)):
        with pytest.raises(ValueError, match="num_blocks and block_size must be positive"):
            _Minimal(num_blocks, block_size)
    tiny = _Minimal(1, 1)
    assert tiny.capacity_tokens == 1


def test_constructor_records_the_sizes():
    a = _Minimal(3, 5, 11)
    assert (a.num_blocks, a.block_size, a.max_model_len) == (3, 5, 11)
    assert a.capacity_tokens == 15


def test_minimal_allocator_inherits_the_contract_defaults():
    a = _Minimal()
    assert _Minimal.name == ""
    assert _Minimal.description == ""
    assert _Minimal.grows_on_demand is False
    assert _Minimal.supports_fork is False
    assert a.num_cow_copies == 0
    assert a.address_space_name is None
    assert a.live_sequences() == [7, 2]
    assert a.take_copy_ops() == []
    assert a.can_fork(7, 9) is False
    with pytest.raises(NotImplementedError, match="_Minimal does not support fork"):
        a.fork(7, 9)
    assert a.held_without_sharing() == 7  # token_states + reserved + internal_fragmentation


def test_append_queries_default_to_one_token_in_the_contract_and_every_allocator():
    for cls in (KVAllocator, *REGISTRY.values()):
        for method in ("can_append", "append"):
            default = inspect.signature(getattr(cls, method)).parameters["num_tokens"].default
            assert default == 1, (cls.__name__, method)
