"""contiguous-pow2 follows the vLLM paper's Orca (Pow2): the prompt plus the next power of two of the OUTPUT length.

Kwon et al., SOSP 2023, section 6.1: Orca (Pow2) "over-reserves the space for outputs by at most 2x. For example, if
the true output length is 25, it reserves 32 positions for outputs." Before this change kvsim reserved the next power
of two of the whole final length (prompt 100 + output 25: next_pow2(124) = 128 slots, fewer than the paper's 132).
"""

from __future__ import annotations

from sim.allocators.contiguous import ContiguousPow2
from sim.checking.model import ContiguousExpectation


def _first_fit(capacity_blocks: int = 64, block_size: int = 16) -> ContiguousPow2:
    # first-fit places exactly the reservation, so the placement's length is the reservation itself
    return ContiguousPow2(capacity_blocks, block_size, 4096, address_space="first-fit")


def test_paper_example_prompt_100_output_25_reserves_132():
    a = _first_fit()
    prompt, output = 100, 25
    final_len = prompt + output - 1  # KV tokens held at the end (the last output token's KV is never written)
    a.admit(1, prompt, final_len)
    assert a.placement(1).length == 100 + 32  # not next_pow2(124) = 128
    m = a.memory()
    assert (m.token_states, m.reserved, m.internal_fragmentation) == (100, 24, 8)


def test_hand_computed_reservations():
    a = _first_fit()
    # (prompt, output) -> prompt + next power of two >= output
    cases = {(100, 25): 132, (100, 32): 132, (100, 33): 164, (7, 1): 8, (1, 2): 3, (500, 100): 628, (0, 5): 8}
    for (prompt, output), want in cases.items():
        assert a.reservation(prompt + output - 1, prompt) == want, (prompt, output)
    assert a.never_fits(124, 100) is None


def test_buddy_rounds_the_paper_reservation():
    a = ContiguousPow2(64, 16, 4096)  # buddy: 132 slots are placed in a 256-slot block
    a.admit(1, 100, 124)
    assert a.placement(1).length == 256


def test_fork_keeps_the_parents_prompt():
    a = _first_fit()
    a.admit(1, 100, 124)
    a.append(1, 10)  # 110 tokens: a re-sized reservation would be 110 + next_pow2(15) = 126
    a.fork(1, 2)
    assert a.placement(2).length == 132


def test_external_fragmentation_uses_the_waiting_prompt():
    a = _first_fit(capacity_blocks=10, block_size=16)  # 160 slots
    a.admit(1, 20, 20)  # 20 + next_pow2(1) = 21 slots; 139 free in one run
    assert a.memory(136, 130).external_fragmentation == 0  # 130 + next_pow2(7) = 138 slots fit in 139
    assert a.memory(136, 100).external_fragmentation == 139  # 100 + next_pow2(37) = 164 do not


def test_property_model_follows_the_same_definition():
    e = ContiguousExpectation("contiguous-pow2", "first-fit", 1024, 4096, reservation=None)
    assert e.reservation(124, 100) == 132
    assert e.reservation(131, 100) == 132  # output 32
    assert e.reservation(132, 100) == 164  # output 33
