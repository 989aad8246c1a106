"""The replica search by cluster simulation (sim.report.cluster_plan) and trace tiling, with hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest

import sim.report.cluster_plan as cluster_plan
from sim.report.cluster_plan import ClusterProbe, search_replicas
from sim.traces.model import Trace
from sim.traces.tools import tile_trace


def small_trace() -> Trace:
    columns = {"prefix_group": np.array([4, -1, 4]), "prefix_tokens": np.array([8, 0, 8])}
    return Trace(
        "t.csv", "native", np.array([10.0, 11.0, 14.0]), np.array([20, 30, 40]), np.array([2, 3, 4]), columns=columns
    )


def test_tile_trace_keeps_the_rate_and_repeats_the_rows():
    # duration 4 s over 3 rows: mean gap 2 s, period 6 s; copy k arrives 6k s later.
    tiled = tile_trace(small_trace(), 3)
    assert tiled.arrival_s.tolist() == [10, 11, 14, 16, 17, 20, 22, 23, 26]
    assert tiled.prompt_tokens.tolist() == [20, 30, 40] * 3
    assert tiled.columns["prefix_group"].tolist() == [4, -1, 4] * 3
    # rate: (rows - 1) / duration = 8 / 16 = 0.5 req/s = 2 / 4, the trace's own
    assert (len(tiled) - 1) / tiled.duration_s == 0.5
    assert tile_trace(small_trace(), 1) is not None
    with pytest.raises(ValueError):
        tile_trace(small_trace(), 0)


def fake_probes(monkeypatch, threshold: int) -> list[int]:
    """probe_cluster replaced: N replicas pass when N >= threshold; returns the counts probed, in order."""
    probed: list[int] = []

    def probe(trace, options, replicas, router, slos):
        probed.append(replicas)
        assert len(trace) == 3 * replicas  # the trace tiled once per replica
        return ClusterProbe(replicas, replicas >= threshold, {}, 0.0, 1.0, 1.0, 3, 0)

    monkeypatch.setattr(cluster_plan, "probe_cluster", probe)
    return probed


def test_search_steps_down_from_a_passing_estimate(monkeypatch):
    probed = fake_probes(monkeypatch, threshold=4)
    plan = search_replicas(small_trace(), 5.0, None, "round-robin", [], by_division=6)
    assert plan.replicas == 4
    assert probed == [6, 5, 3, 4]  # 6, 5 pass (step 1), 3 fails (step 2); bisect (3, 5): 4 passes
    assert [p.replicas for p in plan.probes] == [3, 4, 5, 6]
    probed = fake_probes(monkeypatch, threshold=2)
    assert search_replicas(small_trace(), 5.0, None, "round-robin", [], by_division=40).replicas == 2
    # 40, 39, 37, 33, 25, 9 pass (steps 1, 2, 4, 8, 16), 1 fails (step 32, floored at 1); bisect (1, 9): 5, 3, 2 pass
    assert probed == [40, 39, 37, 33, 25, 9, 1, 5, 3, 2]
    probed = fake_probes(monkeypatch, threshold=1)
    assert search_replicas(small_trace(), 5.0, None, "round-robin", [], by_division=3).replicas == 1
    assert probed == [3, 2, 1]


def test_search_doubles_its_step_then_bisects(monkeypatch):
    probed = fake_probes(monkeypatch, threshold=11)
    plan = search_replicas(small_trace(), 5.0, None, "round-robin", [], by_division=3)
    # 3 fails; 4, 6 fail, 10 fails (steps 1, 2, 4), 18 passes (step 8); bisect (10, 18): 14 pass, 12 pass, 11 pass
    assert probed == [3, 4, 6, 10, 18, 14, 12, 11]
    assert plan.replicas == 11


def test_search_gives_up_at_the_limit(monkeypatch):
    fake_probes(monkeypatch, threshold=100)
    plan = search_replicas(small_trace(), 5.0, None, "round-robin", [], by_division=2, limit=9)
    assert plan.replicas is None
    assert max(p.replicas for p in plan.probes) == 9
