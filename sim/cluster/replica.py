"""One replica of a cluster: an engine (its own scheduler, allocator and clock) fed by the router, not by the trace.

`RoutedIntake` is the replica's intake: the router appends requests to it as they arrive (`deliver`), and the engine
takes them exactly as a lone replay's intake hands it the trace (`sim.serving.intake`). `Replica` bundles the engine
with what a router may read of it (`sim.cluster.routers.ReplicaState`) and brings it to a time (`advance`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.allocators.base import KVAllocator
from sim.cluster.routers import RoutedRequest
from sim.cost.base import CostModel
from sim.records.requests import RequestLog
from sim.serving.engine import Engine
from sim.serving.intake import Intake
from sim.serving.request import Request
from sim.serving.schedulers.base import Scheduler
from sim.traces.model import Trace

FinishedCallback = Callable[["Replica", list[Request], float], None]


class RoutedIntake(Intake):
    """A replica's intake: requests arrive when the router delivers them (position order = delivery order).

    `requests` is a log shared by the replicas of a pool (each request runs on one replica at a time, so each writes
    only its own rows). For a request delivered with `output_tokens` or `num_branches` of its own (a prefill
    replica's one-token run), those replace the trace's.
    """

    def __init__(
        self,
        trace: Trace,
        scheduler: Scheduler,
        max_model_len: int,
        requests: RequestLog,
        num_branches: np.ndarray,
        beam: np.ndarray,
        on_finish: Callable[[list[Request], float], None] | None = None,
    ) -> None:
        self.trace = trace
        self.scheduler = scheduler
        self.max_model_len = max_model_len
        self.progress = None
        self.num_branches, self.beam = num_branches, beam
        self.requests = requests
        self.arrival: list[float] = []  # arrival time of each delivered request, in delivery order
        self._delivered: list[tuple[int, int, int, int | None]] = []  # (row, output, transferred, branches)
        self.next_index = 0
        self.num_done = 0
        self.num_delivered = 0
        self.on_finish = on_finish

    def deliver(
        self,
        i: int,
        arrival_s: float,
        output_tokens: int,
        transferred_tokens: int = 0,
        num_branches: int | None = None,
    ) -> None:
        """Request i (trace row) arrives at this replica at `arrival_s` (seconds, not before the last delivery)."""
        self.arrival.append(arrival_s)
        self._delivered.append((i, output_tokens, transferred_tokens, num_branches))
        self.num_delivered += 1

    def _hand_over(self, position: int) -> None:
        i, output, transferred, branches = self._delivered[position]
        self._delivered[position] = None  # type: ignore[call-overload]  # handed over: let it go
        self.queue(i, int(self.trace.prompt_tokens[i]), output, self.arrival[position], transferred, branches)

    @property
    def num_not_taken(self) -> int:
        """Requests delivered that the engine has not yet taken (they arrived after its last iteration began)."""
        return self.num_delivered - self.next_index

    def finished(self, requests: list[Request], end_s: float) -> None:
        self.count_done(len(requests))
        if self.on_finish is not None:
            self.on_finish(requests, end_s)


class Replica:
    """One engine of a cluster and the figures a router reads (see `sim.cluster.routers.ReplicaState`)."""

    def __init__(
        self,
        index: int,
        trace: Trace,
        scheduler: Scheduler,
        cost_model: CostModel,
        bytes_per_token: int,
        max_model_len: int,
        requests: RequestLog,
        num_branches: np.ndarray,
        beam: np.ndarray,
        fast_forward: bool,
        on_finish: FinishedCallback | None = None,
    ) -> None:
        self.index = index
        self.scheduler = scheduler
        self.allocator: KVAllocator = scheduler.allocator
        callback = None if on_finish is None else (lambda done, end: on_finish(self, done, end))
        self.intake = RoutedIntake(trace, scheduler, max_model_len, requests, num_branches, beam, callback)
        self.engine = Engine(
            trace, scheduler, cost_model, bytes_per_token, max_model_len, fast_forward=fast_forward, intake=self.intake
        )
        self.engine.keep_no_simpy_clock()
        self.routed_requests = 0
        self.routed_tokens = 0  # prompt + output tokens of the requests routed here

    # --- what a router reads ----------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return self.intake.num_delivered - self.intake.num_done

    @property
    def waiting(self) -> int:
        return len(self.scheduler.waiting) + self.intake.num_not_taken

    @property
    def kv_usage(self) -> float:
        free = getattr(self.allocator, "num_free_blocks", None)
        if free is None:
            memory = self.allocator.memory()
            return 1.0 - memory.free / self.allocator.capacity_tokens
        return 1.0 - free / self.allocator.num_blocks

    def cached_prefix_tokens(self, request: RoutedRequest) -> int:
        return self.allocator.prefix_hit_tokens(request.index, request.prompt_tokens, request.content)

    # --- driving it -------------------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """The replica's clock: when its next iteration starts (seconds), or when it went idle."""
        return self.engine.now

    @property
    def busy(self) -> bool:
        """Whether it has requests to run (it has an iteration at `now`)."""
        return self.scheduler.has_work() or self.intake.num_not_taken > 0

    def advance(self, until: float) -> None:
        """Run every iteration that starts before `until` (seconds)."""
        if self.engine.now < until:
            self.engine.advance(until)

    def take(self, request: RoutedRequest, arrival_s: float, output_tokens: int) -> None:
        """Queue a request that will arrive at `arrival_s` without running anything (see run_through)."""
        self.intake.deliver(request.index, arrival_s, output_tokens)
        self.routed_requests += 1
        self.routed_tokens += request.prompt_tokens + request.output_tokens

    def run_through(self) -> None:
        """Run every request taken (`take`) to its end, waiting for each arrival as a lone replay's engine does."""
        engine, intake = self.engine, self.intake
        if intake.num_delivered:
            engine.now = intake.arrival[0]
        while True:
            engine.advance()
            due = intake.next_arrival_s()
            if due is None:
                return
            while engine.now < due:  # as simpy's idle timeouts
                engine.now = engine.now + (due - engine.now)

    def deliver(self, request: RoutedRequest, arrival_s: float, output_tokens: int, **extra) -> None:
        """Request arrives at `arrival_s`; an idle replica's clock moves to it (as a lone replay's would)."""
        engine = self.engine
        if self.intake.num_delivered == 0:  # its clock starts at its first arrival, as a lone replay's does
            engine.now = arrival_s
        self.advance(arrival_s)
        self.intake.deliver(request.index, arrival_s, output_tokens, **extra)
        if not self.scheduler.has_work():
            while engine.now < arrival_s:  # as a lone engine's idle waits: simpy's timeouts, until the arrival is due
                engine.now = engine.now + (arrival_s - engine.now)
        self.routed_requests += 1
        self.routed_tokens += request.prompt_tokens + request.output_tokens
