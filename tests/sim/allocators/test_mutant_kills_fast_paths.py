"""The fast-path protocol (sim/allocators/fast_paths.py): BlockDecodePlan's derived arrays and the declining defaults
a minimal allocator inherits, where generated mutants showed them untested. Expected values are worked out by hand.
"""

import inspect

import numpy as np
import pytest

from sim.allocators.base import ExtentPlacement, KVAllocator, MemoryBreakdown
from sim.allocators.fast_paths import BlockDecodePlan, DecodePlan


class _Minimal(KVAllocator):
    """The ten required methods only; sequence i holds 10 * i tokens."""

    def __init__(self):
        super().__init__(4, 4, 16)
        self._seqs = {1: None, 2: None}
        self.applied = []

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
        return 10 * seq_id

    def placement(self, seq_id):
        return ExtentPlacement(0, 0)

    def memory(self, next_final_len=None, next_prompt_len=None):
        return MemoryBreakdown(0, 0, 0, 0, 16)

    def check(self):
        return None


class _Planner(_Minimal):
    """Returns a fixed plan and records apply_decode calls."""

    def __init__(self, rounds):
        super().__init__()
        self.plan = _plan(rounds)

    def plan_decode(self, seq_ids, max_rounds, next_final_len, next_prompt_len=None):
        return self.plan

    def apply_decode(self, plan, rounds):
        self.applied.append((plan, rounds))


def _plan(rounds):
    z = np.zeros(rounds, np.int64)
    return DecodePlan([1, 2], rounds, z, z, z, z, z, z)


def test_block_decode_plan_arrays():
    plan = BlockDecodePlan(
        seq_ids=[1, 2],
        rounds=3,
        block_size=4,
        num_seqs=2,
        tokens0=10,
        held0=5,
        free0=6,
        logical0=7,
        reserved=[3, 1, 0],
        new_blocks=[0, 1, 1],
    )
    assert (plan.seq_ids, plan.rounds, plan.detail) == ([1, 2], 3, {})
    assert plan.token_states.tolist() == [12, 14, 16]  # 10 + 2 r
    assert plan.reserved.tolist() == [3, 1, 0]
    assert plan.internal_fragmentation.tolist() == [5, 9, 8]  # (5 + new) * 4 - tokens - reserved
    assert plan.external_fragmentation.tolist() == [0, 0, 0]
    assert plan.free.tolist() == [24, 20, 20]  # (6 - new) * 4
    assert plan.unshared.tolist() == [28, 32, 32]  # (7 + new) * 4


def test_block_decode_plan_of_one_round():
    plan = BlockDecodePlan([5], 1, 2, 1, 0, 0, 3, 0, [1], [1])
    assert plan.token_states.tolist() == [1]
    assert plan.internal_fragmentation.tolist() == [0]  # 1 block of 2: 1 token, 1 reserved
    assert plan.free.tolist() == [4]
    assert plan.unshared.tolist() == [2]


def test_decode_plan_detail_defaults_to_empty():
    assert _plan(0).detail == {}


def test_declining_defaults():
    a = _Minimal()
    assert a.append_each([1, 2]) is None
    assert a.append_round() is None
    assert a.round_crossers() is None
    assert a.plan_decode([1, 2], 3, None) is None
    assert a.run_decode([1, 2], 3, None) is None
    assert a.applied == []
    assert a.total_tokens([1, 2]) == 30
    assert a.total_tokens([]) == 0
    with pytest.raises(NotImplementedError, match="_Minimal does not count blocks per append"):
        a.blocks_needed_to_append(1)
    with pytest.raises(NotImplementedError, match="_Minimal makes no decode plans"):
        a.apply_decode(_plan(1), 1)
    assert inspect.signature(KVAllocator.blocks_needed_to_append).parameters["num_tokens"].default == 1


def test_run_decode_applies_every_planned_round():
    a = _Planner(2)
    assert a.run_decode([1, 2], 5, None) is a.plan
    assert a.applied == [(a.plan, 2)]


def test_run_decode_of_a_zero_round_plan_applies_nothing():
    a = _Planner(0)
    assert a.run_decode([1, 2], 5, None) is a.plan
    assert a.applied == []
