"""A host tier through the engine, worked out by hand: a request swapped out and back in (bytes, time, blocks per
tier at every iteration), and a prefix hit served from the host (link time instead of recompute time)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.allocators.host_tier import HostTier
from sim.allocators.paged import PagedAllocator, PagedPrefixCache
from sim.cost.base import CostModel
from sim.cost.host_link import HostLink, HostLinkCost
from sim.records.host_steps import HostStepLog
from sim.records.host_summary import host_tier_summary
from sim.serving.engine import Engine
from sim.serving.schedulers.base import SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler
from sim.traces.model import Trace

BYTES_PER_TOKEN = 25  # blocks of 4 tokens: 100 B


class LinearCost(CostModel):
    """1 s per iteration plus `per_token` s per prompt token computed."""

    def __init__(self, per_token: float = 0.0):
        self.per_token = per_token

    def step_time(self, batch) -> float:
        return 1.0 + self.per_token * batch.num_prefill_tokens

    def describe(self) -> dict:
        return {"kind": "linear"}


def trace(arrivals, prompts, outputs, **columns) -> Trace:
    return Trace(
        "test.csv",
        "native",
        np.array(arrivals, dtype=np.float64),
        np.array(prompts, dtype=np.int64),
        np.array(outputs, dtype=np.int64),
        columns={k: np.array(v, dtype=np.int64) for k, v in columns.items()},
    )


def run(tr: Trace, allocator, host: HostTier, link: HostLink, per_token: float = 0.0, preemption="recompute"):
    allocator.attach_host(host)
    sched = VllmV0Scheduler(allocator, SchedulerLimits(8, 100))
    sched.preemption = preemption
    cost = HostLinkCost(LinearCost(per_token), link)
    engine = Engine(tr, sched, cost, BYTES_PER_TOKEN, 64)
    engine.steps = HostStepLog(host)
    steps, requests = engine.run()
    return steps.arrays(), requests, sched, cost


def test_a_preempted_request_is_swapped_out_and_back_in() -> None:
    # 4 blocks of 4 tokens. A: 8 prompt + 5 output tokens; B: 4 + 6; both at t = 0. Link: 100 B/s, so one block
    # (100 B) takes 1 s; every iteration takes 1 s plus its link time.
    host = HostTier(8, 100)
    steps, requests, sched, cost = run(
        trace([0, 0], [8, 4], [5, 6]), PagedAllocator(4, 4, 64), host, HostLink("test", 100.0), preemption="swap"
    )
    # iteration 1 [0, 1]: A (2 blocks) and B (1 block) prefill and emit their first tokens; 1 block free.
    # iteration 2: A (8 tokens) and B (4) both need a new block for their next token, one is free: A takes it and B,
    #   the most recently admitted, is swapped out: 1 block to the host, 1 s on the link -> [1, 3].
    # iterations 3-5 [3, 6]: A decodes (its third block has room); B needs its block and a new one (2), 1 is free.
    #   A emits its fifth token at the end of iteration 5 and frees its 3 blocks.
    # iteration 6: B comes back (1 block from the host, 1 s) and decodes -> [6, 8]; iterations 7-10 [8, 12].
    assert steps["duration_s"].tolist() == [1, 2, 1, 1, 1, 2, 1, 1, 1, 1]
    assert steps["to_host_bytes"].tolist() == [0, 100] + [0] * 8
    assert steps["to_gpu_bytes"].tolist() == [0] * 5 + [100] + [0] * 4
    # host blocks of swapped requests, after each iteration is scheduled: B's one block during iterations 2-5
    assert steps["host_swapped_bytes"].tolist() == [0, 100, 100, 100, 100, 0, 0, 0, 0, 0]
    assert steps["host_cached_bytes"].tolist() == [0] * 10
    # GPU blocks held (token states + reserved + internal fragmentation) + free = 4 blocks x 4 slots x 25 B
    free_blocks = (steps["free_bytes"] / 100).tolist()
    # 1: A 2 + B 1 held; 2: A 3 (B gone); 3-5: A 3; 6: B 2 (its block back + a new one); 7-9: B 2; 10: B 3 (its 9th
    # token, the 4 of its prompt and 5 emitted before the last, crosses into a third block)
    assert free_blocks == [1, 1, 1, 1, 1, 2, 2, 2, 2, 1]
    assert requests.finish_s.tolist() == [6.0, 12.0]
    assert requests.first_token_s.tolist() == [1.0, 1.0]
    assert requests.preemptions.tolist() == [0, 1]
    assert (host.swap_outs, host.swap_ins, host.bytes_to_host, host.bytes_to_gpu) == (1, 1, 100, 100)
    assert cost.link_time_s == 2.0
    host.check()


def test_a_prefix_hit_is_served_from_the_host() -> None:
    # 3 blocks of 4 tokens, a host of 4 blocks, link 10,000 B/s: 0.01 s per block. An iteration takes 1 s + 0.1 s per
    # prompt token computed. R1: 9 tokens of which 8 are document A's (prefix group 0), at t = 0; R2: 12 tokens of
    # document B (group 1), at 10 s; R3: A's request again, at 20 s. Each emits one token.
    host = HostTier(4, 100)
    tr = trace([0, 10, 20], [9, 12, 9], [1, 1, 1], prefix_group=[0, 1, 0], prefix_tokens=[8, 12, 8])
    steps, requests, sched, cost = run(tr, PagedPrefixCache(3, 4, 64), host, HostLink("test", 10_000.0), 0.1)
    # R1 [0, 1.9]: 9 tokens computed: 1 + 0.9 s; its blocks (A, 0) and (A, 1) stay cached when it finishes.
    # R2 [10, 12.22]: 12 tokens take the 3 blocks, evicting A's two to the host: 200 B, 0.02 s; 1 + 1.2 + 0.02.
    # R3 [20, 21.13]: (A, 0) and (A, 1) are on the host: 8 tokens hit, 1 computed. Its 3 blocks evict B's 3 cached
    #   blocks (300 B to the host; the host, 2 blocks free once A's are claimed, drops B's first for the third) and
    #   A's 2 come back (200 B): max(300, 200) / 10,000 = 0.03 s; 1 + 0.1 + 0.03.
    assert steps["duration_s"] == pytest.approx([1.9, 2.22, 1.13])
    assert steps["prefill_tokens"].tolist() == [9, 12, 1]
    assert steps["to_host_bytes"].tolist() == [0, 200, 300]
    assert steps["to_gpu_bytes"].tolist() == [0, 0, 200]
    assert requests.first_token_s - tr.arrival_s == pytest.approx([1.9, 2.22, 1.13])  # R3: 1.13 s, not 1.9 s
    assert (host.host_hit_blocks, host.host_evictions, host.blocks_offloaded) == (2, 1, 5)
    summary = host_tier_summary(host, cost, steps, sched.prefill_tokens_requested, 4, "recompute")
    # prefill tokens asked for: 9 + 12 + 9 = 30; 8 found on the host
    assert summary["host_hit_tokens"] == 8 and summary["host_hit_rate"] == pytest.approx(8 / 30)
    # recompute time saved: the 8 tokens' compute (0.8 s more than an empty iteration) - their 2 blocks' 0.02 s
    assert summary["recompute_time_saved_s"] == pytest.approx(0.78)
    assert summary["link_time_s"] == pytest.approx(0.05)
    # host blocks after each iteration: none; A's two; B's two newest (A's came back to the GPU)
    assert (steps["host_cached_bytes"] / 100).tolist() == [0, 2, 2]
