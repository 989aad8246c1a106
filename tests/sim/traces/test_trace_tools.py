"""trace_stats, slice_trace, scale_trace on tiny traces with hand-computed figures."""

import math

import numpy as np
import pytest

from sim.errors import UserError
from sim.traces.model import Trace
from sim.traces.tools import format_stats, scale_trace, shareable_prefix_tokens, slice_trace, trace_stats


def make(arrivals, prompt, output, **kw):
    return Trace(
        "t.csv",
        "native",
        np.array(arrivals, dtype=float),
        np.array(prompt, dtype=np.int64),
        np.array(output, dtype=np.int64),
        **kw,
    )


def test_stats_by_hand():
    s = trace_stats(make([0, 1, 3, 6], [10, 20, 30, 40], [1, 2, 3, 4]))
    assert s["rows"] == 4
    assert s["duration_s"] == 6.0
    assert s["arrival_rate_rps"] == pytest.approx(3 / 6)  # (rows - 1) / duration
    # gaps 1, 2, 3: mean 2, population std sqrt((1 + 0 + 1) / 3)
    assert s["burstiness_cv"] == pytest.approx(math.sqrt(2 / 3) / 2)
    # nearest rank on 10, 20, 30, 40: p50 -> rank ceil(2) = 2 -> 20; p90 -> rank ceil(3.6) = 4 -> 40
    assert s["prompt_tokens"] == {"mean": 25.0, "p50": 20, "p90": 40, "p99": 40, "max": 40}
    assert s["total_tokens"] == {"mean": 27.5, "p50": 22, "p90": 44, "p99": 44, "max": 44}
    assert s["shareable_prefix_tokens"] == 0 and s["shareable_prefix_source"] == "none"
    text = format_stats(s)
    assert "arrival rate: 0.5 requests/s  (= (rows - 1) / duration)" in text
    assert "burstiness: 0.41  (coefficient of variation of inter-arrival times; Poisson = 1)" in text
    assert "shareable prefix tokens: 0 (the trace has no prefix groups or hash ids" in text


def test_stats_poisson_burstiness_is_about_one():
    rng = np.random.Generator(np.random.PCG64(0))
    arrivals = np.concatenate([[0], np.cumsum(rng.exponential(1.0, 100_000))])
    n = len(arrivals)
    s = trace_stats(make(arrivals, np.ones(n, dtype=int), np.ones(n, dtype=int)))
    assert s["burstiness_cv"] == pytest.approx(1.0, abs=0.02)


def test_stats_single_row_has_no_rate():
    s = trace_stats(make([5], [10], [1]))
    assert s["arrival_rate_rps"] is None and s["burstiness_cv"] is None and s["duration_s"] == 0.0
    assert "arrival rate: n/a" in format_stats(s)


def test_shareable_from_prefix_groups():
    t = make(
        [0, 1, 2, 3, 4, 5],
        [100, 100, 100, 100, 100, 100],
        [1] * 6,
        columns={"prefix_group": np.array([0, 0, 1, 0, 1, -1]), "prefix_tokens": np.array([100, 50, 30, 80, 30, 0])},
    )
    # group 0: 100 (first), then min(50, 100) + min(80, 100) = 130; group 1: 30 (first), then 30; ungrouped: 0.
    assert shareable_prefix_tokens(t) == (160, "prefix groups")
    s = trace_stats(t)
    assert s["shareable_prefix_fraction"] == pytest.approx(160 / 600)
    assert s["prefix_groups"] == 2 and s["requests_in_prefix_groups"] == 5
    assert "shareable prefix tokens: 160 of 600 prompt tokens (26.7%, from prefix groups)" in format_stats(s)


def test_shareable_from_hash_ids():
    flat = np.array([0, 1, 2, 0, 3, 0, 5, 5])
    offsets = np.array([0, 3, 5, 6, 8])
    t = make([0, 1, 2, 3], [1100, 600, 512, 700], [1] * 4, block_hashes=(flat, offsets))
    # repeated: request 1's id 0 (block 0: 512 tokens), request 2's id 0 (512), request 3's second 5 (block 1:
    # 700 - 512 = 188 tokens)
    assert shareable_prefix_tokens(t) == (512 + 512 + 188, "hash ids")


def test_slice_window_first_skip():
    t = make([10, 11, 13, 16, 20], [1, 2, 3, 4, 5], [1] * 5, request_id=list("abcde"))
    w = slice_trace(t, start_s=1, end_s=6)  # relative 0, 1, 3, 6, 10 -> [1, 6) keeps b, c
    assert w.prompt_tokens.tolist() == [2, 3] and w.arrival_s.tolist() == [0.0, 2.0] and w.request_id == ["b", "c"]
    w = slice_trace(t, start_s=0.5, end_s=6)  # window starts at 10.5: b arrives 0.5 s into it
    assert w.arrival_s.tolist() == [0.5, 2.5]
    assert slice_trace(t, first=2).prompt_tokens.tolist() == [1, 2]
    w = slice_trace(t, skip=1, first=2)
    assert w.prompt_tokens.tolist() == [2, 3] and w.arrival_s.tolist() == [0.0, 2.0]
    assert slice_trace(t, skip=1, first=2, rebase=False).arrival_s.tolist() == [11.0, 13.0]
    with pytest.raises(UserError, match="no requests in the selection"):
        slice_trace(t, start_s=100)
    with pytest.raises(UserError, match="must be after --start"):
        slice_trace(t, start_s=5, end_s=5)


def test_slice_keeps_optional_columns():
    t = make([0, 1, 2], [5, 6, 7], [1, 1, 1], columns={"n": np.array([1, 2, 3])})
    assert slice_trace(t, skip=1).columns["n"].tolist() == [2, 3]


def test_scale():
    t = make([10, 11, 13], [1, 2, 3], [1, 1, 1])
    assert scale_trace(t, factor=2).arrival_s.tolist() == [10.0, 10.5, 11.5]
    # rate now (3 - 1) / 3 s; to 4/3 requests/s means a factor of 2
    assert scale_trace(t, rate=4 / 3).arrival_s.tolist() == pytest.approx([10.0, 10.5, 11.5])
    assert t.arrival_s.tolist() == [10.0, 11.0, 13.0]  # the input is untouched
    with pytest.raises(UserError, match="either --factor or --rate"):
        scale_trace(t)
    with pytest.raises(UserError, match="--factor must be a positive number"):
        scale_trace(t, factor=0)
    with pytest.raises(UserError, match="at least two requests at different times"):
        scale_trace(make([1, 1], [1, 1], [1, 1]), factor=2)
