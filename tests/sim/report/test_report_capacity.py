"""Capacity search, SLOs and goodput, checked against answers computed by hand.

The end-to-end case is a D/D/1 queue built so that its capacity is known in closed form:

- N = 101 identical requests of P = 10 prompt tokens and 1 output token, arriving every g seconds;
- max_num_seqs = 1, so one request runs at a time, and with 1 output token a request is done after its prefill
  iteration (its first token is its last);
- a tiny custom model (1 layer, 1 KV head of size 16, 1,000 parameters) and a 0.1 s step overhead, so every
  iteration takes the same s = 0.1 s + the roofline term, computed below from the README's formula.

If g >= s every request finds the engine idle: TTFT = s. If g < s the queue grows: request k (from 0) starts when
request k - 1 finishes, at k x s, so TTFT_k = (k + 1) s - k g = s + k (s - g). numpy's linear-interpolation p99 of
those N = 101 values sits exactly on k = 0.99 x (N - 1) = 99: p99 = s + 99 (s - g). With the SLO ttft_p99 <= T and
T = s + 99 x s / 2, the SLO holds exactly while g >= s / 2: the capacity is r* = 2 / s requests/s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.records.requests import RequestLog
from sim.report.capacity import CapacitySearch, evaluate_probe, replicas_needed
from sim.report.slo import SLO, good_requests, meets, parse_slos, per_request_latency, slo_values
from sim.serving.replay import ReplayOptions
from sim.traces.model import Trace

N, P = 101, 10
OVERHEAD = 0.1
GPU = "a100-80gb"  # 2.039e12 B/s HBM, 312e12 bf16 FLOP/s


def step_time_by_hand() -> float:
    """The roofline of one 10-token prefill of the tiny model (README, 'How a replay works')."""
    weight_bytes = 1000 * 2  # parameters x 2 B
    kv_bytes_per_token = 2 * 1 * 1 * 16 * 2  # K and V x layers x KV heads x head size x 2 B
    bytes_moved = weight_bytes + (0 + P) * kv_bytes_per_token  # weights + KV read (no context) + KV written
    flops = 2 * 1000 * P + 4 * 1 * 1 * 16 * (P * (P + 1) // 2)  # 2 x params x tokens + attention (causal pairs)
    return max(bytes_moved / 2.039e12, flops / 312e12) + OVERHEAD


def queue_trace() -> Trace:
    arrivals = np.arange(N, dtype=np.float64)  # one per second: the trace's own rate is (N - 1) / (N - 1) = 1 req/s
    return Trace("queue.csv", "native", arrivals, np.full(N, P, dtype=np.int64), np.ones(N, dtype=np.int64))


def queue_options() -> ReplayOptions:
    model = resolve_model("layers=1,heads=1,kv_heads=1,head_size=16,params=1000,max_len=64")
    return ReplayOptions(
        model=model,
        gpu=resolve_gpu(GPU),
        allocator="paged",
        block_size=16,
        kv_memory=1 << 20,
        max_num_seqs=1,
        step_overhead_s=OVERHEAD,
    )


def test_queue_ttft_matches_the_hand_formula():
    s = step_time_by_hand()
    T = s + 99 * s / 2
    slos = [SLO("ttft", 99, T)]
    trace, options = queue_trace(), queue_options()
    # below capacity (g = 1 s >= s): every TTFT is s
    p = evaluate_probe(trace, options, 1.0, slos)
    assert p.passed
    assert p.slo_values["ttft_p99"] == pytest.approx(s, rel=1e-9)
    # above it: g = 1/30 s, p99 = s + 99 (s - g)
    g = 1 / 30
    p = evaluate_probe(trace, options, 30.0, slos)
    assert p.slo_values["ttft_p99"] == pytest.approx(s + 99 * (s - g), rel=1e-6)
    assert not p.passed
    # goodput: good requests are those with s + k (s - g) <= T, i.e. k <= 49.5 s / (s - g); duration is N x s
    good = math.floor(49.5 * s / (s - g)) + 1
    assert good == 75
    assert p.goodput_rps == pytest.approx(good / (N * s), rel=1e-6)
    assert p.good_fraction == pytest.approx(good / N)


def test_capacity_search_finds_the_known_threshold():
    s = step_time_by_hand()
    r_star = 2 / s  # see the module docstring
    slos = [SLO("ttft", 99, s + 99 * s / 2)]
    trace, options = queue_trace(), queue_options()
    search = CapacitySearch(start_rate=1.0, precision=0.02)
    while (rate := search.next_rate()) is not None:
        search.record(rate, evaluate_probe(trace, options, rate, slos).passed)
    assert search.lo <= r_star < search.hi
    assert search.hi / search.lo <= 1.02
    assert search.capacity == search.lo
    assert r_star * (1 - 0.02) < search.capacity <= r_star
    # bracketing from 1 req/s: 1, 2, 4, 8, 16 pass, 32 fails; then bisection of [16, 32) to 2%:
    # ceil(log2(log 2 / log 1.02)) = 6 probes
    assert [r for r, _ in search.history[:6]] == [1, 2, 4, 8, 16, 32]
    assert len(search.history) == 6 + math.ceil(math.log2(math.log(2) / math.log(1.02)))
    assert not search.non_monotone


@pytest.mark.parametrize("threshold,start", [(7.3, 1.0), (7.3, 100.0), (0.05, 3.0), (1000.0, 1000.0)])
def test_search_on_a_step_function(threshold, start):
    """passes(r) = r <= threshold: the capacity is within precision below the threshold, from either side."""
    search = CapacitySearch(start, precision=0.01)
    while (rate := search.next_rate()) is not None:
        search.record(rate, rate <= threshold)
    assert search.lo <= threshold < search.hi
    assert search.hi <= search.lo * 1.01
    assert not search.unbounded and not search.unattainable


def test_search_unattainable_and_unbounded():
    search = CapacitySearch(1.0, max_steps=5)
    while (rate := search.next_rate()) is not None:
        search.record(rate, False)
    # 1, 1/2, ..., 1/32: six probes, all failing
    assert [r for r, _ in search.history] == [1, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert search.unattainable and search.capacity == 0
    assert replicas_needed(10, search.capacity) is None
    search = CapacitySearch(1.0, max_steps=3)
    while (rate := search.next_rate()) is not None:
        search.record(rate, True)
    assert [r for r, _ in search.history] == [1, 2, 4, 8]
    assert search.unbounded and search.capacity == 8


def test_non_monotone_answers_are_flagged():
    search = CapacitySearch(4.0)
    search.record(4.0, True)
    search.record(2.0, False)  # fails below a rate that passed
    assert search.non_monotone


def test_replicas_needed():
    assert replicas_needed(10, 2.9) == 4  # ceil(3.45)
    assert replicas_needed(10, 2.5) == 4  # exactly 4 x 2.5
    assert replicas_needed(10, 10.5) == 1
    assert replicas_needed(10, 0.999) == 11
    assert replicas_needed(1, 0) is None


def test_bad_search_parameters():
    with pytest.raises(UserError):
        CapacitySearch(0.0)
    with pytest.raises(UserError):
        CapacitySearch(1.0, precision=0)


# --- SLOs -------------------------------------------------------------------------------------------------------
def test_parse_slos():
    slos = parse_slos("ttft_p99=2s, tpot_p99=100ms,e2e_p50=1min,ttft_p99.9=3")
    assert [(s.metric, s.percentile, s.threshold_s) for s in slos] == [
        ("ttft", 99, 2.0),
        ("tpot", 99, 0.1),
        ("e2e", 50, 60.0),
        ("ttft", 99.9, 3.0),
    ]
    assert slos[3].name == "ttft_p99.9"
    for bad in (
        "",
        "ttft=2s",
        "latency_p99=2s",
        "ttft_p0=1s",
        "ttft_p101=1s",
        "ttft_p99=-1s",
        "ttft_p99=2s,ttft_p99=3s",
        "ttft_p99=fast",
    ):
        with pytest.raises(UserError):
            parse_slos(bad)


def _log(arrival, first, finish, output) -> RequestLog:
    n = len(arrival)
    log = RequestLog.empty(np.array(arrival, float), np.full(n, 5), np.array(output))
    log.first_token_s[:] = first
    log.finish_s[:] = finish
    return log


def test_slo_values_and_per_request_goodput_by_hand():
    # four requests; the third never finished
    log = _log([0, 1, 2, 3], [0.5, 1.2, np.nan, 6.0], [2.5, 1.2, np.nan, 9.0], [5, 1, 3, 4])
    lat = per_request_latency(log)
    # ttft: 0.5, 0.2, -, 3.0; tpot: (2.5-0.5)/4 = 0.5, - (1 token), -, (9-6)/3 = 1.0; e2e: 2.5, 0.2, -, 6.0
    np.testing.assert_allclose(lat["ttft"], [0.5, 0.2, np.nan, 3.0])
    np.testing.assert_allclose(lat["tpot"], [0.5, np.nan, np.nan, 1.0])
    slos = parse_slos("ttft_p50=1s,tpot_p99=0.9s")
    values = slo_values(slos, lat)
    assert values["ttft_p50"] == pytest.approx(0.5)  # median of 0.2, 0.5, 3.0
    assert values["tpot_p99"] == pytest.approx(0.5 + 0.99 * 0.5)  # linear between 0.5 and 1.0
    assert not meets(slos, values, completed=3)  # 0.995 > 0.9
    assert meets(parse_slos("ttft_p50=1s,tpot_p99=1s"), slo_values(parse_slos("ttft_p50=1s,tpot_p99=1s"), lat), 3)
    # per request: ttft <= 1 s and tpot <= 0.9 s (tpot does not apply to the 1-token request)
    completed = ~np.isnan(log.finish_s)
    assert good_requests(slos, lat, completed).tolist() == [True, True, False, False]
    # the highest-percentile SLO of a metric sets its per-request threshold
    two = parse_slos("ttft_p50=0.3s,ttft_p99=1s")
    assert good_requests(two, lat, completed).tolist() == [True, True, False, False]


def test_meets_with_nothing_completed_or_no_tpot():
    assert not meets(parse_slos("ttft_p99=1s"), {"ttft_p99": None}, completed=0)
    assert meets(parse_slos("tpot_p99=1s"), {"tpot_p99": None}, completed=3)  # every request had 1 output token


def test_progress_line_shows_each_search():
    """The status line (shown on a terminal) names every configuration's bracket and, at the end, its capacity."""
    import io

    from sim.progress import StatusLine
    from sim.report.build import make_configs, run_searches

    s = step_time_by_hand()
    stream = io.StringIO()
    configs = make_configs(queue_options(), ["paged", "contiguous-max"], [16])
    out = run_searches(
        queue_trace(),
        configs,
        [SLO("ttft", 99, s + 99 * s / 2)],
        precision=0.05,
        jobs=1,
        status=StatusLine(enabled=True, stream=stream, interval_s=0),
    )
    text = stream.getvalue()
    assert "searches [" in text and "2/2 done" in text
    for label, (search, probes) in out.items():
        assert f"{label.replace(' / ', '/')} {search.capacity:.3g}" in text
        assert len(probes) == len(search.history)
    assert text.endswith("\n")
    quiet = io.StringIO()
    run_searches(
        queue_trace(),
        configs[:1],
        [SLO("ttft", 99, 1.0)],
        precision=0.5,
        jobs=1,
        status=StatusLine(enabled=False, stream=quiet),
    )
    assert quiet.getvalue() == ""


def test_host_tier_configurations_and_their_labels():
    """--host-kv-memories: a configuration per host tier for each paged allocator ('GPU only' for none), the
    contiguous ones GPU only; swap preemption and the link only where there is a host tier."""
    from dataclasses import replace

    from sim.report.build import make_configs

    base = replace(queue_options(), host_kv_memory=2**30, preemption="swap", host_link="pcie4")
    configs = make_configs(base, ["paged", "contiguous-max"], [16], None, [None, 2**30, 2 * 2**30])
    assert [c.label for c in configs] == [
        "paged / 16 GPU only",
        "paged / 16 + host 1.00 GiB",
        "paged / 16 + host 2.00 GiB",
        "contiguous-max / 16 GPU only",
    ]
    hosts = [(c.options.host_kv_memory, c.options.preemption, c.options.host_link) for c in configs]
    assert hosts == [
        (None, "recompute", None),
        (2**30, "swap", "pcie4"),
        (2 * 2**30, "swap", "pcie4"),
        (None, "recompute", None),
    ]
    # one host tier (or none) compared: labels as before
    assert [c.label for c in make_configs(queue_options(), ["paged"], [16])] == ["paged / 16"]
