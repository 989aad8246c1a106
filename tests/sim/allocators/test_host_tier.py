"""The host tier (sim.allocators.host_tier) with the paged allocators: swap out and in, the offloaded prefix cache,
worked out by hand in the comments."""

from __future__ import annotations

import pytest

from sim.allocators.base import AllocationError, TokenContent
from sim.allocators.host_tier import HOST_HIT, OFFLOAD, SWAP_IN, SWAP_OUT, TO_GPU, TO_HOST, HostTier
from sim.allocators.paged import PagedAllocator, PagedPrefixCache

A = TokenContent(((("doc", "A"), 8),))
B = TokenContent(((("doc", "B"), 12),))


def kinds(transfers):
    return [(t.direction, t.kind) for t in transfers]


def test_a_host_tier_holds_whole_blocks() -> None:
    with pytest.raises(ValueError):
        HostTier(0, 100)
    with pytest.raises(ValueError):
        HostTier(4, 0)


def test_swap_out_and_in_keeps_sharing_and_contents() -> None:
    a = PagedAllocator(4, 4, 64)
    host = HostTier(8, 100)
    a.attach_host(host)
    a.admit(1, 6, 10)  # blocks b0 (4 tokens) and b1 (2)
    a.fork(1, 2)  # seq 2 shares b0 and b1
    a.append(2, 1)  # seq 2 writes into the shared partial b1: a private copy b2 (3 tokens)
    assert a.take_copy_ops() == [(1, 2)]
    assert a.placement(1).block_table == (0, 1) and a.placement(2).block_table == (0, 2)

    swapped = a.swap_out([1, 2])
    # unique blocks b0, b1, b2: three host blocks, three copies to the host, 3 x 100 B
    assert swapped.num_blocks == 3 and swapped.fills == [4, 2, 3]
    assert kinds(host.take_transfers()) == [(TO_HOST, SWAP_OUT)] * 3
    assert host.bytes_to_host == 300 and host.swap_outs == 1
    assert host.memory().swapped == 3 and host.memory().free == 5
    assert a.num_free_blocks == 4 and a.memory().token_states == 0 and a.live_sequences() == []
    a.check()

    # swap in needs the 3 blocks and nothing more: seq 1 (6 tokens) and seq 2 (7) each write into a private partial
    # last block
    assert a.swap_in_need(swapped) == 3 and a.can_swap_in(swapped)
    a.swap_in(swapped)
    assert kinds(host.take_transfers()) == [(TO_GPU, SWAP_IN)] * 3
    assert host.bytes_to_gpu == 300 and host.swap_ins == 1 and host.memory().free == 8
    assert a.num_tokens(1) == 6 and a.num_tokens(2) == 7
    t1, t2 = a.placement(1).block_table, a.placement(2).block_table
    assert t1[0] == t2[0] and len({t1[1], t2[1], t1[0]}) == 3  # the first block is shared again
    assert a.pool.ref_counts[t1[0]] == 2
    assert a.memory().token_states == 4 + 2 + 3
    a.check()
    a.append(1, 1)
    a.append(2, 1)
    a.check()


def test_swap_in_counts_the_blocks_one_more_token_needs() -> None:
    a = PagedAllocator(4, 4, 64)
    a.attach_host(HostTier(8, 100))
    a.admit(1, 4, 10)  # one full block: the next token needs a new block
    a.admit(2, 6, 10)
    a.fork(2, 3)  # seqs 2 and 3 share a partial last block: the first of them to write copies it
    swapped = a.swap_out([2, 3])
    # blocks of seqs 2/3: b1, b2 (2 blocks); the shared partial last block costs one copy: 3
    assert a.swap_in_need(swapped) == 3
    one = a.swap_out([1])
    assert a.swap_in_need(one) == 1 + 1  # its block, and a new one at the block boundary
    a.admit(4, 5, 5)  # 2 of the 4 blocks: 2 left, not enough for seqs 2 and 3
    assert not a.can_swap_in(swapped)
    with pytest.raises(AllocationError):
        a.swap_in(swapped)
    assert a.can_swap_in(one)


def test_swap_out_needs_room_on_the_host() -> None:
    a = PagedAllocator(4, 4, 64)
    a.attach_host(HostTier(1, 100))
    a.admit(1, 8, 10)  # two blocks; the host has one
    assert not a.can_swap_out([1])
    with pytest.raises(AllocationError):
        a.swap_out([1])
    assert not PagedAllocator(4, 4, 64).can_swap_out([1])  # no host tier


def test_evicted_cached_blocks_go_to_the_host_and_a_hit_brings_them_back() -> None:
    a = PagedPrefixCache(3, 4, 64)
    host = HostTier(4, 100)
    a.attach_host(host)
    # seq 1: A's 8 tokens + 1 own token = 9 tokens in b0, b1 (full: keys (A, 0), (A, 1)) and b2 (1 token)
    assert a.admit(1, 9, 9, A) == 0
    a.free(1)  # freed in reverse: the free queue is b2, b1, b0 (b1 and b0 still cached)
    # seq 2: B's 12 tokens take b2, then b1 and b0, evicting A's two blocks to the host
    assert a.admit(2, 12, 12, B) == 0
    assert kinds(host.take_transfers()) == [(TO_HOST, OFFLOAD)] * 2
    assert host.num_cached == 2 and host.bytes_to_host == 200
    a.free(2)  # its three blocks stay cached on the GPU (keys (B, 0..2))
    # seq 3 wants A again: no GPU hit, (A, 0) and (A, 1) on the host: 8 tokens hit, at most (9 - 1) // 4 = 2 blocks
    assert a.prefix_hit_tokens(3, 9, A) == 8
    assert a.admit(3, 9, 9, A) == 8
    transfers = host.take_transfers()
    # the 3 blocks it takes evict B's 3 cached blocks to the host: 2 free host blocks, then the least recently used
    # cached one (B's first) is dropped; then A's two blocks come back
    assert kinds(transfers) == [(TO_HOST, OFFLOAD)] * 3 + [(TO_GPU, HOST_HIT)] * 2
    assert host.host_evictions == 1 and host.host_hit_blocks == 2
    assert host.bytes_to_host == 500 and host.bytes_to_gpu == 200
    assert host.memory().cached == 2 and host.memory().free == 2
    # the loaded blocks are the first two of seq 3's table, and are indexed again
    table = a.placement(3).block_table
    assert [t.gpu_block for t in transfers[3:]] == list(table[:2])
    assert a.pool.hash_block[(("doc", "A"), 0)] == table[0]
    a.check()


def test_a_host_hit_is_the_continuation_of_the_gpu_hits() -> None:
    a = PagedPrefixCache(4, 4, 64)
    host = HostTier(4, 100)
    a.attach_host(host)
    a.admit(1, 9, 9, A)
    a.free(1)  # b3 was never taken; free queue: b3, b2 (1 token), b1 (A, 1), b0 (A, 0)
    # take 3 blocks: b3, b2, b1 -> evicts (A, 1) only; (A, 0) stays on the GPU in b0
    a.admit(2, 12, 12, B)
    assert host.num_cached == 1 and host.has_cached((("doc", "A"), 1))
    a.free(2)
    host.take_transfers()
    # seq 3: (A, 0) from the GPU, then (A, 1) from the host
    assert a.admit(3, 9, 9, A) == 8
    assert kinds(host.take_transfers())[-1:] == [(TO_GPU, HOST_HIT)]
    assert a.placement(3).block_table[0] == 0
    a.check()


def test_drop_cache_empties_the_host_cache_but_keeps_swapped_blocks() -> None:
    a = PagedPrefixCache(3, 4, 64)
    host = HostTier(8, 100)
    a.attach_host(host)
    a.admit(1, 9, 9, A)
    a.free(1)
    a.admit(2, 12, 12, B)  # evicts A's two blocks to the host
    swapped = a.swap_out([2])
    assert host.memory().cached == 2 and host.memory().swapped == 3
    a.drop_cache()
    assert host.memory().cached == 0 and host.memory().swapped == 3 and host.memory().free == 5
    a.discard_swapped(swapped)
    assert host.memory().free == 8
    a.check()


def test_a_swap_out_that_never_ran_is_taken_back() -> None:
    # a request swapped out in an iteration that then runs nothing and is rejected: its copies never happen
    a = PagedAllocator(4, 4, 64)
    host = HostTier(8, 100)
    a.attach_host(host)
    a.admit(1, 8, 8)
    a.admit(2, 4, 4)
    kept = a.swap_out([2])  # 1 block: goes through as an iteration's copy
    gone = a.swap_out([1])  # 2 blocks
    pending = host.take_transfers()
    assert len(pending) == 3 and host.bytes_to_host == 300 and host.swap_outs == 2
    left = a.discard_swapped(gone, pending)
    assert left == pending[:1]  # seq 2's copy stays, to run with the next iteration
    assert host.bytes_to_host == 100 and host.swap_outs == 1 and host.memory().swapped == kept.num_blocks == 1
    assert a.discard_swapped(kept, []) == []  # nothing pending: nothing uncounted
    assert host.bytes_to_host == 100 and host.memory().free == 8


def test_copies_that_never_run_are_uncounted() -> None:
    # A's two cached blocks are evicted to the host by B's admission; the replay ends before an iteration runs them
    a = PagedPrefixCache(3, 4, 64)
    host = HostTier(4, 100)
    a.attach_host(host)
    a.admit(1, 9, 9, A)
    a.free(1)
    a.admit(2, 12, 12, B)
    pending = a.take_transfers()
    assert (host.bytes_to_host, host.blocks_offloaded) == (200, 2)
    a.drop_transfers(pending)
    assert (host.bytes_to_host, host.blocks_offloaded) == (0, 0)
    PagedAllocator(2, 4, 64).drop_transfers([])  # no host tier: nothing to uncount
