"""Routers: which replica of a pool serves a request, decided at its arrival on the cluster's clock.

A router sees each replica through `ReplicaState` (requests outstanding and waiting, KV usage, what its KV cache
holds of a prompt) as the replica will be at its next iteration boundary at or after the arrival (`sim.cluster.run`
brings every replica there first when the router's `needs_state` is true; a router that reads no state is decided
without it, which lets each replica fast-forward between its own arrivals). Ties go to the lowest replica index
(llm-d: drawn at random), so every router is deterministic for a given seed.

Registered like allocators (`--router NAME` or `--router package.module:ClassName`); a user's class needs `route` and
may set `needs_state` (default true) and `description`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from sim.allocators.base import TokenContent
from sim.plugins import load_class


@dataclass(frozen=True, slots=True)
class RoutedRequest:
    """What a router knows of a request: its trace row, tokens and the identity of its prompt's tokens."""

    index: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    content: TokenContent | None


class ReplicaState(Protocol):
    """One replica as a router sees it (`sim.cluster.replica.Replica` implements it)."""

    index: int  # position in its pool

    @property
    def outstanding(self) -> int:
        """Requests routed to the replica that have not finished or been rejected."""
        ...

    @property
    def waiting(self) -> int:
        """Requests routed to the replica that are not running (queued, or routed and not yet taken)."""
        ...

    @property
    def kv_usage(self) -> float:
        """Fraction of the replica's KV blocks in use (0..1)."""
        ...

    def cached_prefix_tokens(self, request: RoutedRequest) -> int:
        """Leading prompt tokens whose KV the replica holds now (what its prefix cache would give the request)."""
        ...


class Router(Protocol):
    name: str
    needs_state: bool

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        """Index (in `replicas`) of the replica that serves `request`."""
        ...


class _Base:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_state: ClassVar[bool] = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed


class RoundRobin(_Base):
    name = "round-robin"
    description = "replicas in turn, whatever their state"
    needs_state = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._next = 0

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        chosen = self._next % len(replicas)
        self._next = chosen + 1
        return chosen


class RandomRouter(_Base):
    name = "random"
    description = "a replica drawn uniformly at random (seeded by --seed)"
    needs_state = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._rng = random.Random(seed)

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        return self._rng.randrange(len(replicas))


def least_outstanding(replicas: Sequence[ReplicaState]) -> int:
    """Index of the replica with the fewest outstanding requests (the lowest index among equals)."""
    return min(range(len(replicas)), key=lambda r: replicas[r].outstanding)


class LeastOutstanding(_Base):
    name = "least-outstanding"
    description = "the replica with the fewest requests routed to it and not yet finished"

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        return least_outstanding(replicas)


class LeastKVUsage(_Base):
    name = "least-kv-usage"
    description = "the replica whose KV blocks are least used (ties: fewest outstanding requests)"

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        return min(range(len(replicas)), key=lambda r: (replicas[r].kv_usage, replicas[r].outstanding))


class PrefixAware(_Base):
    name = "prefix-aware"
    description = "the replica holding the longest prefix of the prompt in its KV cache (ties: fewest outstanding)"

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        if request.content is None:  # nothing shared: no replica can hold any of it
            return least_outstanding(replicas)
        return min(
            range(len(replicas)),
            key=lambda r: (-replicas[r].cached_prefix_tokens(request), replicas[r].outstanding),
        )


class LlmdScorer(_Base):
    """llm-d's default scheduling profile: a prefix-cache scorer (weight 3) and a queue scorer (weight 2), summed,
    highest score wins, ties drawn at random (seeded). prefix score = cached prompt tokens / prompt tokens; queue
    score = (max waiting - waiting) / (max waiting - min waiting) over the pool (1 for all when every queue is as
    long). Following the llm-d inference-scheduler's documented default (Red Hat OpenShift AI 3.4, "Configuring
    scheduler settings": queue scorer 2, prefix-cache scorer 3, max-score picker); its prefix scorer reads the
    replicas' KV-cache events, here the replicas' caches themselves."""

    name = "llm-d"
    description = "llm-d's default profile: 3 x prefix-cache score + 2 x queue score, highest wins (ties: random)"
    PREFIX_WEIGHT = 3.0
    QUEUE_WEIGHT = 2.0

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._rng = random.Random(seed)

    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        waiting = [r.waiting for r in replicas]
        low, high = min(waiting), max(waiting)
        prompt = max(1, request.prompt_tokens)
        best: list[int] = []
        best_score = -1.0
        for r, replica in enumerate(replicas):
            queue = 1.0 if high == low else (high - waiting[r]) / (high - low)
            prefix = replica.cached_prefix_tokens(request) / prompt if request.content is not None else 0.0
            score = self.PREFIX_WEIGHT * prefix + self.QUEUE_WEIGHT * queue
            if score > best_score:
                best, best_score = [r], score
            elif score == best_score:
                best.append(r)
        return best[0] if len(best) == 1 else best[self._rng.randrange(len(best))]


ROUTERS: dict[str, type] = {
    cls.name: cls for cls in (RoundRobin, RandomRouter, LeastOutstanding, LeastKVUsage, PrefixAware, LlmdScorer)
}
DEFAULT_ROUTER = "round-robin"


def resolve_router(spec: str) -> type:
    """The router class registered as `spec`, or a user's 'package.module:ClassName' (it needs `route`)."""
    return load_class(spec, ROUTERS, ("route",), "router", "sim/cluster/routers.py")


def make_router(spec: str, seed: int = 0) -> Router:
    """A router instance; a user's class is given the seed when its constructor takes one."""
    cls = resolve_router(spec)
    try:
        router = cls(seed)
    except TypeError:
        router = cls()
    if not hasattr(router, "needs_state"):
        router.needs_state = True  # a user's router may read any state: replicas are brought to each arrival
    if not getattr(router, "name", ""):
        router.name = spec
    return router
