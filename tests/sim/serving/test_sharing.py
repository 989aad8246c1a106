"""Copy-on-write forks, shared prefixes, the prefix cache and beams, worked out by hand."""

import numpy as np
import pytest

from sim.allocators import ContiguousOracle, PagedAllocator, PagedPrefixCache, TokenContent
from sim.cost.base import CostModel
from sim.records.summary import sharing_summary, summarize
from sim.serving.beam import BeamModel
from sim.serving.engine import Engine
from sim.serving.schedulers.base import SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler
from sim.traces.model import Trace


def group(g, tokens):
    return TokenContent(((("group", g), tokens),))


def test_two_samples_of_a_20_token_prompt_share_then_copy():
    a = PagedAllocator(num_blocks=8, block_size=16, max_model_len=100)
    a.admit(0, 20, 22)
    assert a.placement(0).block_table == (0, 1)  # block 1 holds tokens 16..19
    a.fork(0, 1)
    assert a.placement(1).block_table == (0, 1)
    assert a.pool.ref_counts[:2] == [2, 2]
    assert a.take_copy_ops() == []
    a.append(0)  # first divergent write into shared, partly filled block 1: sample 0 gets a private copy
    assert a.placement(0).block_table == (0, 2)
    assert a.take_copy_ops() == [(1, 2)]
    a.append(1)  # block 1 is now sample 1's alone: written in place
    assert a.placement(1).block_table == (0, 1)
    assert a.take_copy_ops() == []
    assert a.pool.ref_counts[:3] == [2, 1, 1]
    m = a.memory()
    assert m.token_states == 16 + 5 + 5
    assert m.token_states + m.reserved + m.internal_fragmentation == 3 * 16
    assert a.held_without_sharing() == 4 * 16
    assert a.num_cow_copies == 1
    a.check()
    a.free(0)
    a.free(1)
    assert a.num_free_blocks == 8
    a.check()


def test_no_sharing_fork_copies_every_block():
    a = PagedAllocator(8, 16, 100, sharing=False)
    a.admit(0, 20, 22)
    a.fork(0, 1)
    assert a.placement(1).block_table == (2, 3)
    assert a.take_copy_ops() == [(0, 2), (1, 3)]
    a.append(0)
    a.append(1)
    assert a.take_copy_ops() == []
    assert a.held_without_sharing() == 4 * 16 == 64
    assert a.num_free_blocks == 4
    a.check()


def test_shared_prefix_between_live_requests():
    a = PagedAllocator(8, 4, 100)
    assert a.admit(0, 10, 12, group(5, 10)) == 0  # blocks 0, 1 full of group tokens; block 2 holds 8, 9
    # the second request of group 5 maps the 2 full prefix blocks: 8 tokens not computed again
    assert a.admit(1, 12, 14, group(5, 10)) == 8
    assert a.placement(1).block_table[:2] == (0, 1)
    assert a.placement(1).block_table[2] != 2  # block 2 mixes group and own tokens: not shared
    assert a.admit(2, 12, 14, group(6, 10)) == 0  # another group shares nothing
    a.check()
    # plain paged forgets content when the last user leaves
    for s in (0, 1, 2):
        a.free(s)
    assert a.admit(3, 12, 14, group(5, 10)) == 0
    a.check()


def test_prefix_cache_hit_after_completion_skips_exactly_the_cached_full_blocks():
    a = PagedPrefixCache(8, 4, 100)
    assert a.admit(0, 12, 14, group(1, 10)) == 0  # blocks 0, 1, 2
    a.free(0)  # stays cached at reference count 0
    assert a.memory().free == 8 * 4  # cached blocks count as free memory
    # 12 tokens, 10 of group 1: blocks 0 and 1 are pure group content; block 2 held request 0's own tokens
    assert a.admit(1, 12, 14, group(1, 10)) == 8
    assert a.placement(1).block_table[:2] == (0, 1)
    a.check()
    # a whole-prompt hit still leaves one token to compute: 8 tokens of group 2 -> 1 block hit, not 2
    a.admit(2, 8, 9, group(2, 8))
    a.free(2)
    assert a.admit(3, 8, 9, group(2, 8)) == 4


def test_prefix_cache_evicts_least_recently_used_tail_first():
    a = PagedPrefixCache(4, 2, 100)
    a.admit(0, 4, 5, group(1, 4))  # blocks 0, 1
    a.admit(1, 4, 5, group(2, 4))  # blocks 2, 3
    a.free(0)  # freed first: least recently used; its tail block 1 before block 0
    a.free(1)
    assert a.pool.free_block_ids() == [1, 0, 3, 2]
    assert a.pool.cached_free_blocks() == [1, 0, 3, 2]
    # a hit on request 1's first block takes it out of the queue; new blocks come from the front
    assert a.admit(2, 4, 5, group(2, 4)) == 2
    assert a.placement(2).block_table == (2, 1)  # hit block 2, then block 1 evicted for the rest
    assert a.pool.num_evictions == 1
    a.free(2)  # block 1 (its tail, content of request 2) then block 2 go to the back
    assert a.pool.free_block_ids() == [0, 3, 1, 2]
    a.admit(3, 8, 9)  # 4 new blocks, evicted in LRU order
    assert a.placement(3).block_table == (0, 3, 1, 2)
    a.check()
    a.free(3)
    a.drop_cache()
    assert a.pool.cached_free_blocks() == [] and a.num_free_blocks == 4
    a.check()


def test_contiguous_fork_copies_into_its_own_reservation():
    a = ContiguousOracle(8, 4, 100, address_space="first-fit")
    a.admit(0, 5, 7)
    assert a.can_fork(0, 1)
    a.fork(0, 1)
    assert a.placement(1).start == 7 and a.num_tokens(1) == 5
    assert a.held_without_sharing() == 14
    assert not a.can_fork(0, 2) or a.space.can_alloc(7)


def make_trace(rows, **columns):
    arr = np.array(rows, dtype=np.float64)
    return Trace(
        "t.csv",
        "native",
        arr[:, 0],
        arr[:, 1].astype(np.int64),
        arr[:, 2].astype(np.int64),
        columns={k: np.array(v, dtype=np.int64) for k, v in columns.items()},
    )


class OneSecond(CostModel):
    def step_time(self, batch):
        return 1.0

    def describe(self):
        return {}


SHARED_BEAM = BeamModel()  # one model for every call that passes none: its random stream continues across them


def replay(trace, allocator, beam=SHARED_BEAM):
    sched = VllmV0Scheduler(allocator, SchedulerLimits(256, 4096), beam)
    log, req = Engine(trace, sched, OneSecond(), 1, 100).run()
    steps = log.arrays()
    s = summarize(steps, req, allocator.capacity_tokens, 0.0)
    s["sharing"] = sharing_summary(
        steps, getattr(allocator, "num_cow_copies", 0), sched.prefill_tokens_requested, sched.prefill_tokens_cached
    )
    return steps, s


def test_parallel_sampling_in_the_engine():
    # one request, P=20, O=3, n=2, block size 16.
    # it1: prefill 20 tokens once, fork: 2 physical blocks (32 slots) for 4 logical (64). Tail block: 4 tokens,
    #      2 more to come (final length 22): reserved 2, internal 32 - 20 - 2 = 10.
    # it2: copy-on-write of block 1; 3 blocks: 16 + 5 + 5 tokens, reserved 1 + 1, internal 20.
    # it3: 16 + 6 + 6 tokens, reserved 0, internal 20. Both samples finish at t=3.
    steps, s = replay(make_trace([(0, 20, 3)], n=[2]), PagedAllocator(8, 16, 100))
    assert steps["running"].tolist() == [2, 2, 2]
    assert steps["prefill_tokens"].tolist() == [20, 0, 0]
    assert steps["batched_tokens"].tolist() == [20, 2, 2]
    assert steps["token_states_bytes"].tolist() == [20, 26, 28]
    assert steps["reserved_bytes"].tolist() == [2, 2, 0]
    assert steps["internal_fragmentation_bytes"].tolist() == [10, 20, 20]
    assert steps["unshared_bytes"].tolist() == [64, 64, 64]
    assert s["sharing"]["saved_fraction"] == pytest.approx(1 - (32 + 48 + 48) / (3 * 64))
    assert s["sharing"]["cow_copies"] == 1
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(2 * 3 / 3)
    # the counterfactual holds 4 blocks from the start
    steps, s = replay(make_trace([(0, 20, 3)], n=[2]), PagedAllocator(8, 16, 100, sharing=False))
    assert (steps["token_states_bytes"] + steps["reserved_bytes"] + steps["internal_fragmentation_bytes"]).tolist() == [
        64,
        64,
        64,
    ]
    assert s["sharing"]["saved_fraction"] == 0


def test_prefix_cache_in_the_engine_prefills_fewer_tokens():
    # two requests of group 0 (prefix 10 of 12 tokens), the second after the first finished; block size 4.
    trace = make_trace([(0, 12, 2), (5, 12, 2)], prefix_group=[0, 0], prefix_tokens=[10, 10])
    steps, s = replay(trace, PagedPrefixCache(8, 4, 100))
    assert steps["prefill_tokens"].tolist() == [12, 0, 12 - 8, 0]
    assert s["sharing"]["prefix_cache_hit_tokens"] == 8
    assert s["sharing"]["prefix_cache_hit_rate"] == pytest.approx(8 / 24)
    steps, s = replay(trace, PagedAllocator(8, 4, 100))  # no cache: the first request is gone
    assert steps["prefill_tokens"].tolist() == [12, 0, 12, 0]


def test_beam_model_every_beam_descends_from_the_first_when_all_are_dropped():
    model = BeamModel(replace_prob=1.0, seed=3)
    assert model.step(3) == [(1, 0), (2, 0)]
    assert BeamModel(replace_prob=0.0).step(4) == []


def test_beams_share_history_and_free_dropped_blocks():
    # P=8, O=6, beam width 3, block size 4, every beam replaced by a fork of beam 0 at every step: beams share all
    # full blocks; each step the 2 replaced beams take private copies of the shared tail only when it is written.
    trace = make_trace([(0, 8, 6)], beam_width=[3])
    steps, s = replay(trace, PagedAllocator(32, 4, 100), BeamModel(replace_prob=1.0, seed=0))
    assert steps["running"].tolist() == [3] * 6
    held = steps["token_states_bytes"] + steps["reserved_bytes"] + steps["internal_fragmentation_bytes"]
    # it1: 8 tokens in 2 shared full blocks; it2: each beam writes token 9 into a new block of its own
    assert held.tolist()[:2] == [8, 8 + 3 * 4]
    assert steps["unshared_bytes"].tolist()[:2] == [3 * 8, 3 * 12]
    assert s["sharing"]["saved_fraction"] > 0.4
    # with no drops, beams share only the prompt
    steps0, s0 = replay(trace, PagedAllocator(32, 4, 100), BeamModel(replace_prob=0.0))
    assert s0["sharing"]["saved_fraction"] < s["sharing"]["saved_fraction"]
