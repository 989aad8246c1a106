"""Property-based (stateful) tests of every allocator: random interleavings of admit, append (one and many), fork,
free, preempt / re-admit, cache hits and drains, checked against an obviously-right model after every step (see
sim/checking). The "ci" profile (default) runs in well under a minute; HYPOTHESIS_PROFILE=thorough runs long."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from sim.allocators import REGISTRY, ContiguousOracle, TokenContent
from sim.allocators.address_space import BuddySpace, FirstFitSpace
from sim.checking import INVARIANTS
from sim.checking.invariants import VIOLATIONS
from sim.checking.model import Model, buddy_free_blocks, buddy_regions, free_runs, next_pow2, token_identity
from sim.checking.runner import AllocatorSpec, run_machine, specs_for, suite_settings

# Every registered allocator, contiguous ones with each address-space policy, and the paged --no-sharing counterfactual.
SPECS = [spec for cls in REGISTRY.values() for spec in specs_for(cls)]
if "paged" in REGISTRY:
    SPECS.append(AllocatorSpec(REGISTRY["paged"], {"sharing": False}))

# The state machines are cheap (small capacities): in the "ci" profile, three times its examples per allocator; in
# "thorough" (longer runs of stateful_step_count steps), KVSIM_THOROUGH_EXAMPLES sequences (default 1500) each.
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def machine_settings():
    if THOROUGH:
        return suite_settings(settings(), max_examples=int(os.environ.get("KVSIM_THOROUGH_EXAMPLES", "1500")))
    return suite_settings(settings(), scale=3)


# Invariants to switch off, comma-separated (the mutation check uses it to show what the suite catches without the
# allocators' own check()).
DISABLED = frozenset(filter(None, os.environ.get("KVSIM_DISABLED_INVARIANTS", "").split(",")))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_allocator_invariants(spec: AllocatorSpec) -> None:
    violation = run_machine(spec, machine_settings(), DISABLED)
    if violation is not None:
        pytest.fail(violation.format(), pytrace=False)


def test_every_registered_allocator_is_covered() -> None:
    assert {s.cls for s in SPECS} == set(REGISTRY.values())


# --- regressions: shrunk examples of real bugs the suite found ----------------------------------------------------


@pytest.mark.parametrize("address_space", ["buddy", "first-fit"])
def test_contiguous_fork_of_a_parent_grown_past_its_final_length(address_space: str) -> None:
    """A shrunk example from the suite (honesty): a parent may append beyond its final length (up to its reservation),
    so fork must size the child for all the parent's tokens, not for the parent's final length."""
    b = ContiguousOracle(num_blocks=1, block_size=2, max_model_len=1, address_space=address_space)  # 2 slots
    b.admit(1, 0, 0)  # oracle reserves max(1, 0) = 1 slot
    b.append(1, 1)  # 1 token in that slot, beyond the final length 0
    assert b.can_fork(1, 2)  # one slot left: room for a copy of the 1 token
    b.fork(1, 2)  # the child's reservation holds the parent's 1 token
    assert b.num_tokens(2) == 1 and b.placement(2).length == 1
    b.check()
    a = ContiguousOracle(num_blocks=1, block_size=1, max_model_len=1, address_space=address_space)  # 1 slot
    a.admit(1, 0, 0)
    a.append(1, 1)
    assert not a.can_fork(1, 2)  # no slot left for the child


# --- the model's own pieces, by hand ------------------------------------------------------------------------------


def test_next_pow2() -> None:
    assert [next_pow2(n) for n in (0, 1, 2, 3, 4, 5, 8, 9)] == [1, 1, 2, 4, 4, 8, 8, 16]


def test_buddy_regions_split_capacity_into_aligned_powers_of_two() -> None:
    assert buddy_regions(8) == [(0, 8)]
    assert buddy_regions(12) == [(0, 8), (8, 4)]
    assert buddy_regions(7) == [(0, 4), (4, 2), (6, 1)]


def test_buddy_free_blocks_by_hand() -> None:
    assert buddy_free_blocks(8, []) == [(0, 8)]
    # [0, 2) held: free are [2, 4) and [4, 8)
    assert buddy_free_blocks(8, [(0, 2)]) == [(2, 2), (4, 4)]
    # [2, 4) and [4, 5) held: [0, 2), [5, 6), [6, 8) free; [4, 6) is not free as a whole
    assert buddy_free_blocks(8, [(2, 2), (4, 1)]) == [(0, 2), (5, 1), (6, 2)]
    # regions never merge across: 12 = 8 + 4, all free
    assert buddy_free_blocks(12, []) == [(0, 8), (8, 4)]


def test_buddy_free_blocks_agree_with_buddy_space() -> None:
    space = BuddySpace(12)  # regions [0, 8) and [8, 12)
    a = space.alloc(3)  # 4 slots: the smallest free block that fits is the region at 8
    b = space.alloc(1)  # 1 slot: [0, 8) split down to [0, 1)
    assert (a, b) == (8, 0)
    assert buddy_free_blocks(12, [(8, 4), (0, 1)]) == sorted(space.free_extents()) == [(1, 1), (2, 2), (4, 4)]


def test_free_runs_by_hand() -> None:
    assert free_runs(10, [(2, 3), (7, 1)]) == [(0, 2), (5, 2), (8, 2)]
    space = FirstFitSpace(10)
    space.alloc(2), space.alloc(3), space.alloc(2)
    space.release(2)
    assert free_runs(10, [(0, 2), (5, 2)]) == space.free_extents() == [(2, 3), (7, 3)]


def test_token_identity_follows_token_content() -> None:
    content = TokenContent(((("g", 1), 3), (("h", 2), 2)))
    assert [token_identity(content, 9, p) for p in range(6)] == [
        ("run", ("g", 1), 0),
        ("run", ("g", 1), 1),
        ("run", ("g", 1), 2),
        ("run", ("h", 2), 0),
        ("run", ("h", 2), 1),
        ("unique", 9, 5),
    ]


def test_tags_name_whole_prefixes() -> None:
    m = Model()
    g = TokenContent(((("g", 1), 4),))
    a = m.admit(1, 4, 8, g)
    b = m.admit(2, 6, 8, g)
    c = m.admit(3, 4, 8, TokenContent(((("g", 2), 4),)))
    assert a.tags == b.tags[:4]  # equal prefixes, equal tags
    assert b.tags[4] != b.tags[5] and not set(b.tags[4:]) & set(a.tags)
    assert not set(c.tags) & set(a.tags)
    a.grow(m.interner, 2)  # appended (generated) tokens are unique to the sequence
    assert a.tags[4:] != b.tags[4:6]
    child = m.fork(1, 4)
    assert child.tags == a.tags and m.forked


def test_every_invariant_has_a_violation_class() -> None:
    assert set(VIOLATIONS) == set(INVARIANTS)
    for name, cls in VIOLATIONS.items():
        assert issubclass(cls, AssertionError) and cls.invariant == name
