"""A cluster against independent references, and the engine's properties over random clusters.

- One replica is a lone replay: the same records, bit for bit.
- Round-robin over N replicas is N lone replays of every N-th request (the router reads no state, so each replica
  sees exactly its own arrivals).
- Hypothesis: random small traces through random clusters (replicas, router, allocator, scheduler, disaggregated or
  not): every request completes or is rejected with a reason; no request runs on two replicas at once; time never
  goes back on any replica; a cluster whose router reads no state, routed up front, writes the records of the one
  run event by event; a fast-forwarded cluster writes exactly the records of the step-by-step one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cluster.link import KVLink
from sim.cluster.routers import ROUTERS
from sim.cluster.run import ClusterOptions, simulate_cluster
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.records.steps import STEP_COLUMNS
from sim.serving.replay import ReplayOptions, replay
from sim.traces.model import Trace
from sim.traces.readers import read_trace

TIMES = ("admitted_s", "first_token_s", "finish_s")


def same_requests(a, b) -> None:
    for name in TIMES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.preemptions, b.preemptions)
    assert a.rejection == b.rejection


@pytest.mark.parametrize(
    "path,allocator,scheduler",
    [
        ("traces/azure-llm-2023-conv.csv", "paged", "vllm-v1"),
        ("traces/azure-llm-2023-conv.csv", "contiguous-pow2", "vllm-v0"),
        ("traces/shared-prefix-1k.csv", "paged-prefix-cache", "vllm-v1"),
        ("traces/parallel-sampling-1k.csv", "paged", "vllm-v0"),
    ],
)
def test_one_replica_is_a_lone_replay(path, allocator, scheduler):
    trace = read_trace(path).select(slice(0, 400))
    options = ReplayOptions(
        model=resolve_model("llama-2-7b"), gpu=resolve_gpu("a100-40gb"), allocator=allocator, scheduler=scheduler
    )
    alone = replay(trace, options)
    for router in ("round-robin", "least-outstanding", "prefix-aware"):
        run = simulate_cluster(trace, ClusterOptions(options, 1, router))
        same_requests(alone.requests, run.requests)
        steps = run.replicas[0].engine.steps.arrays()
        for column in STEP_COLUMNS:
            np.testing.assert_array_equal(alone.steps[column], steps[column], err_msg=column)


def test_round_robin_is_independent_replays():
    trace = read_trace("traces/azure-llm-2023-conv.csv").select(slice(0, 600))
    options = ReplayOptions(model=resolve_model("llama-2-7b"), gpu=resolve_gpu("a100-40gb"), kv_memory=3 * 2**30)
    n = 3
    run = simulate_cluster(trace, ClusterOptions(options, n, "round-robin"))
    # Requests longer than the model are refused before routing; the others go to replicas 0, 1, 2, 0, ...
    routable = np.flatnonzero(trace.prompt_tokens + trace.output_tokens <= options.model.max_model_len)
    assert 0 < len(routable) < len(trace)
    for r in range(n):
        rows = routable[r::n]
        alone = replay(trace.select(rows), options)
        same_requests(alone.requests, run.requests.select(rows))
        assert (run.replica_of[rows] == r).all()
    assert (run.replica_of[np.setdiff1d(np.arange(len(trace)), routable)] == -1).all()


MODEL = resolve_model("llama-2-7b", 96)
GPU = resolve_gpu("a100-80gb")
BPT = MODEL.kv_bytes_per_token()


@st.composite
def traces(draw) -> Trace:
    n = draw(st.integers(1, 14))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.3]), min_size=n, max_size=n))
    arrival = np.cumsum(np.array(gaps, dtype=np.float64))
    prompt = np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)), dtype=np.int64)
    output = np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n)), dtype=np.int64)
    columns = {}
    if draw(st.booleans()):
        columns["n"] = np.array(draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=n, max_size=n)), np.int64)
    if draw(st.booleans()):
        columns["prefix_group"] = np.array(draw(st.lists(st.integers(-1, 1), min_size=n, max_size=n)), np.int64)
        columns["prefix_tokens"] = np.minimum(prompt, draw(st.integers(1, 32)))
    return Trace("<hypothesis>", "native", arrival, prompt, output, columns=columns)


@st.composite
def clusters(draw) -> ClusterOptions:
    scheduler = draw(st.sampled_from(["vllm-v0", "vllm-v1"]))
    replica = ReplayOptions(
        model=MODEL,
        gpu=GPU,
        allocator=draw(st.sampled_from(["paged", "paged-prefix-cache", "contiguous-pow2", "contiguous-max"])),
        scheduler=scheduler,
        kv_memory=draw(st.sampled_from([12, 20, 40])) * 16 * BPT,  # blocks of 16 tokens
        max_num_seqs=draw(st.sampled_from([4, 8])),
        max_num_batched_tokens=draw(st.sampled_from([16, 64, 256])) if scheduler == "vllm-v1" else 256,
    )
    router = draw(st.sampled_from(list(ROUTERS)))
    seed = draw(st.integers(0, 3))
    if scheduler == "vllm-v1" and draw(st.booleans()):
        link = KVLink(draw(st.sampled_from([1e9, 1e12])), draw(st.sampled_from([0.0, 0.002])))
        return ClusterOptions(replica, 0, router, seed, draw(st.integers(1, 2)), draw(st.integers(1, 3)), link)
    return ClusterOptions(replica, draw(st.integers(1, 4)), router, seed)


def step_by_step(options: ClusterOptions) -> ClusterOptions:
    return dataclasses.replace(options, replica=dataclasses.replace(options.replica, fast_forward=False))


@settings(max_examples=60, deadline=None)
@given(trace=traces(), options=clusters())
def test_cluster_properties(trace, options):
    run = simulate_cluster(trace, options)
    log = run.requests
    done = ~np.isnan(log.finish_s)
    rejected = np.array([r is not None for r in log.rejection])
    assert (done ^ rejected).all(), "a request neither finished nor rejected, or both"
    assert (run.replica_of[done] >= 0).all()
    assert (log.first_token_s[done] <= log.finish_s[done]).all()
    assert (log.admitted_s[done] >= log.arrival_s[done]).all()
    # No request on two replicas at once: each replica was given its own requests (the counts add up to the
    # requests routed), and a disaggregated request reaches its decode replica after its prefill has finished.
    main = run.replicas[options.prefill_replicas :] if options.disaggregated else run.replicas
    routed = int((run.replica_of >= 0).sum())
    assert sum(r.routed_requests for r in main) == routed
    for r in main:
        assert r.routed_requests == int((run.replica_of == r.index).sum())
    if options.disaggregated:
        pre = run.prefill_requests
        assert (log.admitted_s[done] >= pre.finish_s[done]).all()
    for replica in run.replicas:  # each replica's iterations follow one another
        steps = replica.engine.steps.arrays()
        ends = steps["time_s"] + steps["duration_s"]
        assert (steps["time_s"][1:] >= ends[:-1] - 1e-12).all()
    # routed up front (a router that reads no state) equals event by event
    interleaved = simulate_cluster(trace, options, interleave=True)
    same_requests(interleaved.requests, log)
    np.testing.assert_array_equal(interleaved.replica_of, run.replica_of)
    # fast-forward equals step-by-step
    slow = simulate_cluster(trace, step_by_step(options), interleave=True)
    same_requests(slow.requests, log)
    np.testing.assert_array_equal(slow.replica_of, run.replica_of)
    for a, b in zip(slow.replicas, run.replicas):
        sa, sb = a.engine.steps.arrays(), b.engine.steps.arrays()
        for column in STEP_COLUMNS:
            np.testing.assert_array_equal(sa[column], sb[column], err_msg=column)
