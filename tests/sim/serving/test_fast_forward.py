"""Fast-forward is exact: a replay that computes quiet stretches in one step writes exactly the records of a replay
that simulates every iteration (`fast_forward=False`), for every allocator, on random traces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.allocators import REGISTRY, TokenContent
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS
from sim.serving.replay import ReplayOptions, replay
from sim.traces.model import Trace

MODEL = MODELS["llama-2-7b"]


def random_trace(seed: int, count: int, sharing: bool) -> Trace:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.05, count))
    arrivals[rng.random(count) < 0.2] = 0  # ties, including several at once
    arrivals = np.sort(arrivals)
    prompt = rng.integers(1, 300, count)
    output = rng.integers(1, 120, count)
    columns = {}
    if sharing:
        columns["n"] = rng.choice([1, 1, 2, 3], count)
        columns["beam_width"] = np.where(rng.random(count) < 0.15, 2, 1)
        group = rng.integers(-1, 3, count)
        columns["prefix_group"] = group
        columns["prefix_tokens"] = np.where(group >= 0, np.minimum(prompt, 64), 0)
    return Trace(
        "random.csv",
        "native",
        arrivals.astype(np.float64),
        prompt.astype(np.int64),
        output.astype(np.int64),
        columns=columns,
    )


def assert_same(trace: Trace, options: ReplayOptions) -> int:
    fast = replay(trace, options)
    options.fast_forward = False
    slow = replay(trace, options)
    a, b = dict(fast.summary), dict(slow.summary)
    skipped = a.pop("iterations_fast_forwarded")
    assert b.pop("iterations_fast_forwarded") == 0
    assert a == b
    for name in slow.steps:
        assert np.array_equal(fast.steps[name], slow.steps[name]), name
    for name in ("admitted_s", "first_token_s", "finish_s"):
        assert np.array_equal(getattr(fast.requests, name), getattr(slow.requests, name), equal_nan=True), name
    assert np.array_equal(fast.requests.preemptions, slow.requests.preemptions)
    assert fast.requests.rejection == slow.requests.rejection
    return skipped


# (scheduler, token budget): vllm-v1 with a budget of 64 tokens chunks most prompts of the random traces
SCHEDULERS = [("vllm-v0", None), ("vllm-v1", 64)]


@pytest.mark.parametrize("scheduler, budget", SCHEDULERS)
@pytest.mark.parametrize("allocator", sorted(REGISTRY))
@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 40),
    sharing=st.booleans(),
    kv_tokens=st.sampled_from([400, 1200, 5000]),
    block_size=st.sampled_from([1, 4, 16]),
)
def test_fast_forward_equals_step_by_step(allocator, scheduler, budget, seed, count, sharing, kv_tokens, block_size):
    trace = random_trace(seed, count, sharing)
    options = ReplayOptions(
        MODEL,
        GPUS["a100-80gb"],
        allocator,
        block_size=block_size,
        kv_memory=kv_tokens * MODEL.kv_bytes_per_token(),
        max_num_seqs=8,
        scheduler=scheduler,
        max_num_batched_tokens=budget,
    )
    assert_same(trace, options)


@pytest.mark.parametrize("scheduler", ["vllm-v0", "vllm-v1"])
@pytest.mark.parametrize("allocator", sorted(REGISTRY))
def test_fast_forward_happens_and_is_exact_on_a_real_trace_slice(allocator, scheduler, repo_root):
    from sim.traces.readers import read_trace

    trace = read_trace(f"{repo_root}/traces/azure-llm-2023-conv.csv")
    trace = trace.select(slice(0, 300))
    options = ReplayOptions(MODEL, GPUS["h100-80gb"], allocator, kv_memory=3 * 2**30, scheduler=scheduler)
    skipped = assert_same(trace, options)
    assert skipped > 0  # the comparison is not vacuous


@pytest.mark.parametrize("allocator", sorted(REGISTRY))
@settings(max_examples=25)
@given(data=st.data())
def test_append_each_equals_appending_one_by_one(allocator, data):
    """The scheduler's bulk append must leave the allocator exactly as appends one by one would."""
    cls = REGISTRY[allocator]
    block_size = data.draw(st.sampled_from([1, 2, 4]))
    twins = [cls(16, block_size, 64), cls(16, block_size, 64)]
    live: list[int] = []
    for step in range(data.draw(st.integers(1, 12))):
        action = data.draw(st.sampled_from(["admit", "fork", "free", "append"]))
        if action == "admit":
            n = data.draw(st.integers(1, 10))
            content = TokenContent(((("g", 0), n),)) if data.draw(st.booleans()) else None
            if all(a.can_admit(step, n, n + 4, content) for a in twins):
                for a in twins:
                    a.admit(step, n, n + 4, content)
                live.append(step)
        elif action == "fork" and live:
            parent = data.draw(st.sampled_from(live))
            if all(a.can_fork(parent, 1000 + step) for a in twins):
                for a in twins:
                    a.fork(parent, 1000 + step)
                live.append(1000 + step)
        elif action == "free" and live:
            victim = data.draw(st.sampled_from(live))
            live.remove(victim)
            for a in twins:
                a.free(victim)
        elif action == "append" and live:
            bulk, single = twins
            total = bulk.append_each(list(live))
            if total is not None:
                for seq in live:
                    assert single.can_append(seq, 1)
                    single.append(seq, 1)
                assert total == sum(single.num_tokens(s) for s in live)
            else:  # declined: only where one by one would copy a block or run out
                assert allocator.startswith("paged") or not all(single.can_append(s, 1) for s in live)
        for a in twins:
            a.check()
            a.take_copy_ops()
        assert twins[0].memory() == twins[1].memory()
        assert twins[0].held_without_sharing() == twins[1].held_without_sharing()
        for seq in live:
            assert twins[0].placement(seq) == twins[1].placement(seq)


@pytest.mark.parametrize("sync_every", [1, 3])
@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 40),
    sharing=st.booleans(),
    kv_tokens=st.sampled_from([400, 5000]),
)
def test_engine_clock_batching_changes_nothing(sync_every, seed, count, sharing, kv_tokens):
    """The engine advances simpy's clock once per Engine.SYNC_EVERY busy iterations; with SYNC_EVERY = 1 (a timeout
    per iteration, as a plain simpy loop) every record is the same."""
    from sim.serving.engine import Engine

    trace = random_trace(seed, count, sharing)
    # Durations that are not short binary fractions, so that sums round.
    options = ReplayOptions(
        MODEL,
        GPUS["a100-80gb"],
        "paged",
        kv_memory=kv_tokens * MODEL.kv_bytes_per_token(),
        max_num_seqs=8,
        step_overhead_s=0.0123456789,
    )
    default = replay(trace, options)
    saved = Engine.SYNC_EVERY
    Engine.SYNC_EVERY = sync_every
    try:
        batched = replay(trace, options)
    finally:
        Engine.SYNC_EVERY = saved
    for name in default.steps:
        assert np.array_equal(default.steps[name], batched.steps[name]), name
    for name in ("admitted_s", "first_token_s", "finish_s"):
        assert np.array_equal(getattr(default.requests, name), getattr(batched.requests, name), equal_nan=True)


def test_stretches_run_through_completions():
    """Two requests admitted together, finishing after 5 and 20 tokens: after the admission iteration everything is
    fast-forwarded, the iteration at whose end request 0 finishes included, and the stretch after it follows at
    once (no iteration run one by one in between); the records are those of the step-by-step replay."""
    trace = Trace("two.csv", "native", np.zeros(2), np.array([30, 40]), np.array([5, 20]))
    options = ReplayOptions(MODEL, GPUS["a100-80gb"], "paged")
    fast = replay(trace, options)
    assert fast.summary["iterations"] == 20  # the admission emits token 1 of both; request 1 emits token 20 last
    assert fast.summary["iterations_fast_forwarded"] == 19
    ends = fast.steps["time_s"] + fast.steps["duration_s"]
    assert fast.requests.finish_s[0] == ends[4] and fast.requests.finish_s[1] == ends[19]
    assert list(fast.steps["running"]) == [2] * 5 + [1] * 15
    assert assert_same(trace, options) == 19


@pytest.mark.parametrize("compact_rows", [1, 5, 8192])
@settings(max_examples=40)
@given(data=st.data())
def test_steplog_decode_segments_equal_their_rows(compact_rows, data):
    """StepLog.extend_decode (stretches kept as lists, turned into rows many at a time) gives the rows of the
    formulas in BlockDecodePlan, computed here one row at a time in Python, between ordinary rows, across
    compactions."""
    from sim.allocators.fast_paths import BlockDecodePlan
    from sim.records.steps import StepLog

    log, want = StepLog(), []
    log.COMPACT_ROWS = compact_rows
    ints = st.integers(0, 10**6)
    for _ in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans()):
            row = (
                data.draw(st.floats(0, 1e4)),
                data.draw(st.floats(1e-4, 1)),
                *data.draw(st.lists(ints, min_size=12, max_size=12)),
            )
            log.append(row)
            want.append([float(v) for v in row])
            continue
        rounds, n, waiting = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 300)), data.draw(ints)
        bs, bpt = data.draw(st.sampled_from([1, 16])), data.draw(st.sampled_from([1, 3, 524288]))
        tokens0, held0, free0, logical0 = (data.draw(ints) for _ in range(4))
        blocks = sorted(data.draw(st.lists(st.integers(0, 50), min_size=rounds, max_size=rounds)))
        reserved = data.draw(st.lists(ints, min_size=rounds, max_size=rounds))
        durations = data.draw(st.lists(st.floats(1e-4, 1), min_size=rounds, max_size=rounds))
        ends = [data.draw(st.floats(0, 1e4))]
        for d in durations:
            ends.append(ends[-1] + d)
        plan = BlockDecodePlan(list(range(n)), rounds, bs, n, tokens0, held0, free0, logical0, reserved, blocks)
        log.extend_decode(ends, durations, n, waiting, bpt, plan)
        for r in range(1, rounds + 1):
            tokens, b = tokens0 + n * r, blocks[r - 1]
            memory = (
                tokens,
                reserved[r - 1],
                (held0 + b) * bs - tokens - reserved[r - 1],
                0,
                (free0 - b) * bs,
                (logical0 + b) * bs,
            )
            want.append([ends[r - 1], durations[r - 1], n, waiting, 0, n, n, 0] + [float(m) * bpt for m in memory])
    got = log.arrays()
    assert len(log) == len(want)
    table = np.column_stack([got[name] for name in got])
    assert np.array_equal(table, np.array(want, dtype=np.float64).reshape(-1, 14))
