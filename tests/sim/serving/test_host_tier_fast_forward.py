"""Fast-forward with a host tier: stretches run only where nothing crosses the host link (no swapped request at the
head of the queue, no eviction of cached content to the host), and a fast-forwarded replay writes exactly the
records of the step-by-step one, host columns included."""

from __future__ import annotations

import dataclasses

import numpy as np

from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions, replay
from sim.traces.readers import read_trace

MODEL = resolve_model("llama-3.1-8b", 8192)


def _at_zero(path: str, n: int):
    """The first n requests of a shipped trace, all arriving at t = 0 (memory binds at once)."""
    t = read_trace(path).select(slice(0, n))
    t.arrival_s = np.zeros(n)
    return t


def _both(trace, **options):
    base = ReplayOptions(model=MODEL, gpu=resolve_gpu("h100-80gb"), **options)
    fast = replay(trace, base)
    slow = replay(trace, dataclasses.replace(base, fast_forward=False))
    return fast, slow


def _same_records(fast, slow) -> None:
    assert fast.steps.keys() == slow.steps.keys()
    for name in fast.steps:
        np.testing.assert_array_equal(fast.steps[name], slow.steps[name], err_msg=name)
    for name in ("first_token_s", "finish_s", "preemptions"):
        np.testing.assert_array_equal(getattr(fast.requests, name), getattr(slow.requests, name), err_msg=name)
    assert fast.summary["host_tier"] == slow.summary["host_tier"]


def test_swap_preemption_fast_forwards_and_matches_step_by_step() -> None:
    trace = _at_zero("traces/sharegpt-2k.csv", 120)
    fast, slow = _both(trace, allocator="paged", kv_memory=384 * 16 * MODEL.kv_bytes_per_token() // 2,
                       host_kv_memory=2**31, preemption="swap")  # fmt: skip
    assert fast.summary["host_tier"]["swap_outs"] > 0, "the replay must swap for the test to mean anything"
    assert fast.summary["iterations_fast_forwarded"] > 0
    assert slow.summary["iterations_fast_forwarded"] == 0
    _same_records(fast, slow)


def test_offloaded_prefix_cache_matches_step_by_step() -> None:
    trace = _at_zero("traces/long-prefix-2k.csv", 60)
    fast, slow = _both(trace, allocator="paged-prefix-cache", kv_memory=2**31, host_kv_memory=2**32)
    assert fast.summary["host_tier"]["bytes_to_host"] > 0, "the replay must offload for the test to mean anything"
    _same_records(fast, slow)
