"""Whole replays on tiny traces, every figure worked out on paper (see each test's comments).

A constant cost model makes every iteration last exactly 1 s, so times are iteration counts.
"""

import numpy as np
import pytest

from sim.allocators import ContiguousMax, PagedAllocator
from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCostModel
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS
from sim.records.summary import summarize
from sim.serving.engine import Engine
from sim.serving.request import Batch
from sim.serving.schedulers.base import SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler
from sim.traces.model import Trace


class OneSecond(CostModel):
    def step_time(self, batch: Batch) -> float:
        return 1.0

    def describe(self) -> dict:
        return {"kind": "constant"}


def make_trace(rows):
    arr = np.array(rows, dtype=np.float64)
    return Trace("t.csv", "native", arr[:, 0], arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64))


DEFAULT_LIMITS = SchedulerLimits(256, 2048)


def run(trace, allocator, max_len=100, limits=DEFAULT_LIMITS):
    engine = Engine(trace, VllmV0Scheduler(allocator, limits), OneSecond(), bytes_per_token=1, max_model_len=max_len)
    log, requests = engine.run()
    steps = log.arrays()
    return steps, requests, summarize(steps, requests, allocator.capacity_tokens, 0.0)


def test_paged_two_requests():
    # block size 4, 3 blocks. r0: P=3, O=3 (final 5); r1: P=5, O=2 (final 6); both at t=0.
    # it1 [0,1): admit r0 (1 block) and r1 (2 blocks). tokens 3+5; reserved: r0 min(1, 2)=1, r1 min(3, 1)=1;
    #            internal 2; free 0. At t=1 both emit token 1.
    # it2 [1,2): r0 -> 4 tokens, r1 -> 6 tokens; reserved 0; internal 2 (r1's last block). r1 emits token 2 and
    #            finishes at t=2, freeing 2 blocks.
    # it3 [2,3): r0 -> 5 tokens takes a second block: internal 3, free 4. r0 finishes at t=3.
    steps, req, s = run(make_trace([(0, 3, 3), (0, 5, 2)]), PagedAllocator(3, 4, 100))
    assert steps["running"].tolist() == [2, 2, 1]
    assert steps["token_states_bytes"].tolist() == [8, 10, 5]
    assert steps["reserved_bytes"].tolist() == [2, 0, 0]
    assert steps["internal_fragmentation_bytes"].tolist() == [2, 2, 3]
    assert steps["free_bytes"].tolist() == [0, 0, 4]
    assert req.first_token_s.tolist() == [1, 1]
    assert req.finish_s.tolist() == [3, 2]
    assert s["duration_s"] == 3
    assert s["batch_size"] == {"mean": 5 / 3, "max": 2}
    assert s["throughput"]["requests_per_s"] == pytest.approx(2 / 3)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(5 / 3)
    assert s["latency_s"]["ttft"]["mean"] == 1
    assert s["latency_s"]["tpot"]["mean"] == pytest.approx(((3 - 1) / 2 + (2 - 1) / 1) / 2)
    assert s["latency_s"]["e2e"]["p50"] == 2.5  # median of 3 and 2
    assert s["kv_memory"]["token_states"] == pytest.approx((8 + 10 + 5) / 12 / 3)


def test_paged_preemption_and_recompute():
    # block size 2, 3 blocks. r0 and r1: P=2, O=4 (final 5), both at t=0.
    # it1 t=0: admit both (1 block each). t=1: each emits token 1.
    # it2 t=1: r0 -> 3 tokens takes the free block; r1 needs one, none free: r1 (newest) is preempted.
    #          No admission in an iteration with a preemption. r0 emits token 2.
    # it3 t=2: r0 -> 4 tokens (fits). r1 would recompute 2 + 1 = 3 tokens = 2 blocks; 1 free: waits.
    # it4 t=3: r0 -> 5 tokens takes the last block; emits token 4 and finishes at t=4.
    # it5 t=4: r1 re-admitted, prefill 3 tokens; emits token 2. it6: 4 tokens, token 3. it7: 5 tokens, token 4,
    #          finishes at t=7.
    steps, req, s = run(make_trace([(0, 2, 4), (0, 2, 4)]), PagedAllocator(3, 2, 100))
    assert steps["running"].tolist() == [2, 1, 1, 1, 1, 1, 1]
    assert steps["preempted"].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert steps["prefill_tokens"].tolist() == [4, 0, 0, 0, 3, 0, 0]
    assert steps["waiting"].tolist() == [0, 1, 1, 1, 0, 0, 0]
    assert req.preemptions.tolist() == [0, 1]
    assert req.first_token_s.tolist() == [1, 1]  # the first token counts from the first admission
    assert req.finish_s.tolist() == [4, 7]
    assert s["requests"]["preemptions"] == 1


def test_contiguous_max_waits_for_a_reservation():
    # 16 slots, max length 8: contiguous-max reserves 8 per request, so two fit.
    # r0: P=2,O=2 (final 3); r1: P=3,O=1 (final 3); r2: P=4,O=4 (final 7); all at t=0.
    # it1: r0 @0, r1 @8; r2 waits (its 8 slots do not fit; no free slot, so no external fragmentation).
    #      tokens 5, reserved 1 (r0), internal 5 + 5. r1 finishes at t=1 (one output token).
    # it2: r0 -> 3 tokens; r2 admitted @8 with 4 tokens: tokens 7, reserved 3, internal 5 + 1. r0 finishes at t=2.
    # it3..5: r2 alone: tokens 5, 6, 7; it finishes at t=5.
    steps, req, s = run(make_trace([(0, 2, 2), (0, 3, 1), (0, 4, 4)]), ContiguousMax(4, 4, 8), max_len=8)
    assert steps["running"].tolist() == [2, 2, 1, 1, 1]
    assert steps["token_states_bytes"].tolist() == [5, 7, 5, 6, 7]
    assert steps["reserved_bytes"].tolist() == [1, 3, 2, 1, 0]
    assert steps["internal_fragmentation_bytes"].tolist() == [10, 6, 1, 1, 1]
    assert steps["free_bytes"].tolist() == [0, 0, 8, 8, 8]
    assert req.admitted_s.tolist() == [0, 0, 1]
    assert req.finish_s.tolist() == [2, 1, 5]
    total = (
        steps["token_states_bytes"]
        + steps["reserved_bytes"]
        + steps["internal_fragmentation_bytes"]
        + steps["external_fragmentation_bytes"]
        + steps["free_bytes"]
    )
    assert (total == 16).all()


def test_rejections_and_idle_gaps():
    # max length 10: r1 (P+O = 11) is rejected; r2 arrives at t=10 after the engine went idle.
    steps, req, s = run(make_trace([(0, 2, 1), (1, 6, 5), (10, 3, 2)]), PagedAllocator(8, 4, 10), max_len=10)
    assert req.rejection[1] == "prompt + output = 11 tokens exceeds the max model length of 10"
    assert req.rejection[0] is None and req.rejection[2] is None
    assert steps["time_s"].tolist() == [0, 10, 11]
    assert req.finish_s[2] == 12
    assert s["requests"] == {"total": 3, "completed": 2, "rejected": 1, "preemptions": 0}
    assert s["duration_s"] == 12


def test_too_big_for_the_cache_is_rejected_not_stuck():
    steps, req, s = run(make_trace([(0, 30, 5)]), PagedAllocator(4, 4, 100))
    assert req.rejection[0] == "needs 9 blocks; the KV cache has 4"
    assert len(steps["time_s"]) == 0 and s["requests"]["completed"] == 0


def test_max_num_seqs_limits_the_batch():
    steps, _, _ = run(make_trace([(0, 1, 2)] * 3), PagedAllocator(16, 4, 100), limits=SchedulerLimits(2, 2048))
    assert steps["running"].tolist() == [2, 2, 1, 1]


def test_roofline_decode_step_by_hand():
    cost = RooflineCostModel(MODELS["llama-2-7b"], GPUS["a100-80gb"], step_overhead_s=0.002)
    # one decode sequence reading 100 tokens of context (including its new token)
    bytes_moved = 6_738_415_616 * 2 + (100 + 1) * 524_288
    flops = 2 * 6_738_415_616 * 1 + 4 * 32 * 32 * 128 * 100
    expected = max(bytes_moved / 2.039e12, flops / 312e12) + 0.002
    assert cost.time(batched_tokens=1, kv_read_tokens=100, attention_pairs=100) == pytest.approx(expected, rel=1e-12)
    # a 4,096-token prefill is compute-bound
    pairs = 4096 * 4097 // 2
    flops = 2 * 6_738_415_616 * 4096 + 4 * 32 * 32 * 128 * pairs
    bytes_moved = 6_738_415_616 * 2 + 4096 * 524_288
    assert flops / 312e12 > bytes_moved / 2.039e12
    assert cost.time(4096, 0, pairs) == pytest.approx(flops / 312e12 + 0.002, rel=1e-12)


def test_replay_pauses_the_garbage_collector_and_restores_it():
    """The cyclic collector is paused during a replay only: afterwards it is as the caller left it."""
    import gc

    import sim.serving.engine as engine
    from sim.serving.replay import ReplayOptions, replay
    from sim.traces.model import Trace

    trace = Trace("t.csv", "native", np.array([0.0, 0.1]), np.array([10, 20]), np.array([5, 5]))
    options = ReplayOptions(MODELS["llama-2-7b"], GPUS["a100-80gb"], "paged")
    seen = []
    real_run = engine.simpy.Environment.run

    def run(env, *args, **kwargs):
        seen.append(gc.isenabled())
        return real_run(env, *args, **kwargs)

    engine.simpy.Environment.run = run
    try:
        assert gc.isenabled()
        replay(trace, options)
        assert gc.isenabled() and seen == [False]
        gc.disable()
        replay(trace, options)
        assert not gc.isenabled()
    finally:
        gc.enable()
        engine.simpy.Environment.run = real_run
