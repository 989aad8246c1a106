"""Routers on tiny traces, every expected assignment worked out by hand from the timeline written beside it.

The cost model takes exactly 1 s per iteration, so a request arriving at an idle replica at t emits its first token
at t + 1 and its last at t + output (one token per iteration, the first with its prompt)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.cluster.routers import ROUTERS, LlmdScorer, RoutedRequest, make_router
from sim.cluster.run import ClusterOptions, simulate_cluster
from sim.cost.base import CostModel
from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions
from sim.traces.model import Trace

OPTIONS = ReplayOptions(model=resolve_model("llama-2-7b"), gpu=resolve_gpu("a100-80gb"), kv_memory=2**30)


class OneSecond(CostModel):
    def step_time(self, batch) -> float:
        return 1.0

    def describe(self) -> dict:
        return {"kind": "one second per iteration"}


def trace(rows, groups=None) -> Trace:
    """rows: (arrival s, prompt tokens, output tokens); groups: (prefix group, prefix tokens) per row."""
    a = np.array(rows, dtype=np.float64)
    columns = {}
    if groups is not None:
        g = np.array(groups, dtype=np.int64)
        columns = {"prefix_group": g[:, 0], "prefix_tokens": g[:, 1]}
    return Trace("t.csv", "native", a[:, 0], a[:, 1].astype(np.int64), a[:, 2].astype(np.int64), columns=columns)


def assignments(t: Trace, router: str, replicas: int = 2, allocator: str = "paged") -> list[int]:
    options = ClusterOptions(ReplayOptions(**{**OPTIONS.__dict__, "allocator": allocator}), replicas, router)
    return simulate_cluster(t, options, cost_model=OneSecond()).replica_of.tolist()


# r0 arrives at 0 and runs 5 iterations on its replica ([0, 5)); r1 at 0.5 emits its only token at 1.5 and is done;
# r2 and r3 arrive at 1.5.
LOAD = trace([(0.0, 4, 5), (0.5, 4, 1), (1.5, 4, 3), (1.5, 4, 1)])


def test_round_robin_takes_turns():
    assert assignments(LOAD, "round-robin") == [0, 1, 0, 1]
    assert assignments(LOAD, "round-robin", replicas=3) == [0, 1, 2, 0]


def test_least_outstanding_counts_what_has_not_finished():
    # r0 -> 0 (a tie: lowest index); r1 -> 1 (0 has r0); at 1.5 replica 1's iteration [0.5, 1.5) has finished r1,
    # so r2 -> 1 (0 outstanding against r0's 1); r3: 1 each (r0, r2) -> 0.
    assert assignments(LOAD, "least-outstanding") == [0, 1, 1, 0]


def test_prefix_aware_follows_the_cached_prefix():
    # r0 (group 7: 32 shared tokens = 2 blocks) -> 0; r1 (no group) -> 1, the least loaded; r1b (no group) at 0.2:
    # one outstanding each -> 0. r2 (group 7) at 2: replica 0 holds r0's two shared blocks (r0 runs until 10), so
    # prefix-aware sends it there although replica 0 has 2 outstanding requests and replica 1 one; least-outstanding
    # sends it to 1.
    t = trace(
        [(0.0, 40, 10), (0.1, 40, 10), (0.2, 40, 10), (2.0, 40, 3)],
        groups=[(7, 32), (-1, 0), (-1, 0), (7, 32)],
    )
    assert assignments(t, "prefix-aware") == [0, 1, 0, 0]
    assert assignments(t, "least-outstanding") == [0, 1, 0, 1]
    assert assignments(t, "prefix-aware", allocator="paged-prefix-cache") == [0, 1, 0, 0]


def test_prefix_aware_finds_a_finished_prefix_in_the_cache():
    # r0 (group 3) runs [0, 2) on replica 0 and finishes; r1 (no group) at 2.5 -> 0 (a tie); r2 (group 3) at 3: the
    # prefix cache of replica 0 still holds r0's block, so it goes to 0 (1 outstanding) rather than to 1 (none).
    # Without a cache (paged) nothing of r0 is left: -> 1.
    t = trace([(0.0, 20, 2), (2.5, 20, 10), (3.0, 20, 2)], groups=[(3, 16), (-1, 0), (3, 16)])
    assert assignments(t, "prefix-aware", allocator="paged-prefix-cache") == [0, 0, 0]
    assert assignments(t, "prefix-aware", allocator="paged") == [0, 0, 1]


class FakeReplica:
    def __init__(self, waiting: int, cached: int):
        self.waiting, self.cached = waiting, cached

    def cached_prefix_tokens(self, request) -> int:
        return self.cached


def test_llm_d_scores_by_hand():
    from sim.allocators.base import TokenContent

    request = RoutedRequest(0, 64, 1, 0.0, TokenContent(((("group", 1), 64),)))
    # queue score (4 - w) / 4: 1, 0, 0.5; prefix score: 0, 0.5, 0.25; 3 p + 2 q = 2, 1.5, 1.75 -> replica 0
    assert LlmdScorer().route(request, [FakeReplica(0, 0), FakeReplica(4, 32), FakeReplica(2, 16)]) == 0
    # 3 x 1 + 2 x 0 = 3 against 0 + 2 x 1 = 2 -> replica 0, the one holding the whole prompt
    assert LlmdScorer().route(request, [FakeReplica(4, 64), FakeReplica(0, 0), FakeReplica(0, 0)]) == 0
    # 3 x 0.5 + 0 = 1.5 against 0 + 2 = 2 -> replica 1
    assert LlmdScorer().route(request, [FakeReplica(4, 32), FakeReplica(0, 0)]) == 1


def test_llm_d_breaks_ties_at_random_with_its_seed():
    request = RoutedRequest(0, 64, 1, 0.0, None)
    replicas = [FakeReplica(0, 0) for _ in range(4)]
    picks = [LlmdScorer(seed=5).route(request, replicas) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]  # the same seed draws the same replica
    router = LlmdScorer(seed=5)
    assert len({router.route(request, replicas) for _ in range(40)}) > 1  # ties do not all go to one replica


def test_random_router_is_seeded():
    t = trace([(i * 0.1, 4, 2) for i in range(30)])
    options = ClusterOptions(OPTIONS, 3, "random", router_seed=11)
    first = simulate_cluster(t, options, cost_model=OneSecond()).replica_of
    again = simulate_cluster(t, options, cost_model=OneSecond()).replica_of
    other = simulate_cluster(t, ClusterOptions(OPTIONS, 3, "random", router_seed=12), cost_model=OneSecond())
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.replica_of.tolist()
    assert set(first.tolist()) == {0, 1, 2}


def test_every_registered_router_serves_every_request():
    t = trace([(i * 0.3, 8 + i, 1 + i % 4) for i in range(12)])
    for name in ROUTERS:
        run = simulate_cluster(t, ClusterOptions(OPTIONS, 3, name), cost_model=OneSecond())
        assert not np.isnan(run.requests.finish_s).any(), name
        assert ((run.replica_of >= 0) & (run.replica_of < 3)).all(), name


class Always1:
    needs_state = False

    def route(self, request, replicas):
        return 1


class Nowhere:
    def route(self, request, replicas):
        return 7


def test_a_users_router(monkeypatch):
    import sys
    import types

    module = types.ModuleType("my_routers")
    module.Always1, module.Nowhere = Always1, Nowhere
    monkeypatch.setitem(sys.modules, "my_routers", module)
    assert assignments(LOAD, "my_routers:Always1") == [1, 1, 1, 1]
    with pytest.raises(UserError, match="chose replica 7 of a pool of 2"):
        assignments(LOAD, "my_routers:Nowhere")


def test_bad_router_and_replica_counts():
    with pytest.raises(UserError, match="unknown router 'fastest'"):
        make_router("fastest")
    with pytest.raises(UserError, match="--replicas must be at least 1"):
        simulate_cluster(LOAD, ClusterOptions(OPTIONS, 0))
    with pytest.raises(UserError, match="--replicas must be a whole number"):
        simulate_cluster(LOAD, ClusterOptions(OPTIONS, -2))


def test_cluster_summary_by_hand():
    from sim.cluster.summary import cluster_summary

    options = ClusterOptions(OPTIONS, 2, "round-robin")
    s = cluster_summary(simulate_cluster(LOAD, options, cost_model=OneSecond()))
    # Round-robin: replica 0 gets r0 (4 + 5 tokens) and r2 (4 + 3), replica 1 r1 (4 + 1) and r3 (4 + 1). Replica 0
    # runs [0, 5): r0 throughout, r2 (arrived at 1.5) from 2 to 5; replica 1 runs r1 in [0.5, 1.5) and r3 in
    # [1.5, 2.5). So busy 5 s and 2 s, and the last iteration ends at 5.
    assert s["duration_s"] == 5.0
    assert s["throughput"]["requests_per_s"] == 4 / 5
    assert s["throughput"]["output_tokens_per_s"] == (5 + 1 + 3 + 1) / 5
    assert s["iterations"] == 5 + 2
    imbalance = s["load_imbalance"]["all"]
    assert imbalance["requests"] == 1.0  # 2 and 2
    assert imbalance["tokens"] == pytest.approx(16 / 13)  # 16 and 10 tokens, mean 13
    assert imbalance["busy_s"] == pytest.approx(5 / 3.5)
    replicas = s["replicas"]["all"]
    assert [r["routed_tokens"] for r in replicas] == [16, 10]
    assert [r["busy_s"] for r in replicas] == [5.0, 2.0]
    assert [r["requests"]["total"] for r in replicas] == [2, 2]
    # TTFT: r0 1 s, r1 1 s, r2 3 - 1.5 = 1.5 s (first token at the end of [2, 3)), r3 1 s
    assert sorted(
        np.round(simulate_cluster(LOAD, options, cost_model=OneSecond()).requests.first_token_s - LOAD.arrival_s, 9)
    ) == [1, 1, 1, 1.5]
