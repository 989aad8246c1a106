"""A cluster on one clock: replicas (each the engine of a lone replay) behind a router, optionally split into a
prefill pool and a decode pool joined by a KV link.

The cluster is a simpy process that takes the cluster's events in time order: arrivals from the trace and, when
disaggregated, prompts whose KV has reached the decode pool. For each event at time t it first brings the replicas
the decision depends on to t (every iteration starting before t is run: `Replica.advance`), routes, and delivers the
request; the replica takes it at its first iteration starting at or after t, exactly as a lone replay's engine takes
an arrival. A router that reads no replica state (round-robin, random) brings only the chosen replica to t, so each
replica fast-forwards between its own arrivals as a lone replay does.

Prefill/decode disaggregation (`prefill_replicas`, `decode_replicas`, vllm-v1 only): a request first runs on a
prefill replica as a one-token request (its prompt is computed and its first token discarded, as vLLM's
disaggregated prefill does); when it finishes there its prompt's KV blocks cross the KV link (`sim.cluster.link`,
one link per prefill replica, transfers one after the other); when they have arrived the decode router picks a decode
replica, which admits the request with all but the last prompt token already computed and emits every output token.
TTFT is measured at the decode replica's first token, so it includes the prefill, the transfer and the queueing at
both pools. Simplifications (README, "Clusters"): the decode replica allocates the KV blocks when it admits the
request, after the transfer (vLLM allocates them first and pulls the KV into them), and the prefill replica frees
its blocks when the prompt is computed (vLLM holds them until the decode side has read them).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from sim.cluster.link import KVLink
from sim.cluster.replica import Replica
from sim.cluster.routers import DEFAULT_ROUTER, RoutedRequest, Router, make_router
from sim.cost.base import CostModel
from sim.errors import UserError
from sim.hardware.budget import KVBudget
from sim.records.requests import RequestLog
from sim.serving.intake import branches_of, content_of
from sim.serving.replay import (
    ReplayOptions,
    make_allocator,
    make_cost_model,
    make_scheduler,
    validate_options,
)
from sim.serving.request import Request
from sim.serving.schedulers import resolve_scheduler
from sim.traces.model import Trace

ProgressCallback = Callable[[int, int], None]


@dataclass
class ClusterOptions:
    """A cluster: `replicas` copies of the replica that `replica` describes behind `router`, or (when
    prefill_replicas and decode_replicas are given) a prefill pool and a decode pool joined by `link`."""

    replica: ReplayOptions
    replicas: int = 1
    router: str = DEFAULT_ROUTER
    router_seed: int = 0
    prefill_replicas: int = 0
    decode_replicas: int = 0
    link: KVLink | None = None  # the KV link of a disaggregated cluster

    @property
    def disaggregated(self) -> bool:
        return self.prefill_replicas > 0 or self.decode_replicas > 0

    @property
    def num_replicas(self) -> int:
        return self.prefill_replicas + self.decode_replicas if self.disaggregated else self.replicas


def validate_cluster(options: ClusterOptions) -> None:
    """Refuse a cluster that cannot run (each message names the option)."""
    validate_options(options.replica)
    for name, value in (
        ("--replicas", options.replicas),
        ("--prefill-replicas", options.prefill_replicas),
        ("--decode-replicas", options.decode_replicas),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise UserError(f"{name} must be a whole number >= 0, got {value!r}")
    make_router(options.router, options.router_seed)  # an unknown router or a broken class: a UserError
    if options.disaggregated:
        if options.prefill_replicas <= 0 or options.decode_replicas <= 0:
            raise UserError("a disaggregated cluster needs --prefill-replicas and --decode-replicas, both >= 1")
        if options.replicas not in (0, 1, options.num_replicas):
            raise UserError(
                f"--replicas {options.replicas} does not match --prefill-replicas {options.prefill_replicas} + "
                f"--decode-replicas {options.decode_replicas}; give one or the other"
            )
        if options.link is None:
            raise UserError("a disaggregated cluster moves each prompt's KV: give --kv-link (e.g. nvlink, ib-400g)")
        if not getattr(resolve_scheduler(options.replica.scheduler), "accepts_transferred_kv", False):
            raise UserError(
                f"prefill/decode disaggregation is modelled for vllm-v1, not the {options.replica.scheduler} "
                "scheduler (it cannot admit a request whose prompt another replica computed)"
            )
    else:
        if options.replicas <= 0:
            raise UserError(f"--replicas must be at least 1, got {options.replicas}")
        if options.link is not None:
            raise UserError("--kv-link applies to a disaggregated cluster (--prefill-replicas, --decode-replicas)")


@dataclass
class ClusterRun:
    """What a cluster replay leaves: its replicas (engines with their records), the request logs and the routing."""

    options: ClusterOptions
    trace: Trace
    budget: KVBudget
    replicas: list[Replica]
    requests: RequestLog  # what clients see: finished, first token and rejections (decode pool when disaggregated)
    replica_of: np.ndarray  # per request: the replica that emitted its tokens (-1: none)
    prefill_requests: RequestLog | None = None  # disaggregated: the prefill pool's one-token runs
    prefill_replica_of: np.ndarray | None = None
    transfers: dict = field(default_factory=dict)  # disaggregated: KV link figures (see sim.cluster.link)
    routers: dict = field(default_factory=dict)  # pool -> router name


class Cluster:
    """Builds the replicas of `options` and replays `trace` through them (see the module docstring)."""

    def __init__(
        self,
        trace: Trace,
        options: ClusterOptions,
        progress: ProgressCallback | None = None,
        cost_model: CostModel | None = None,
        interleave: bool = False,
    ) -> None:
        validate_cluster(options)
        self.interleave = interleave
        self.trace = trace
        self.options = options
        self.progress = progress
        replica_options = options.replica
        self.budget = replica_options.budget()
        self.cost_model = make_cost_model(replica_options) if cost_model is None else cost_model
        self.num_branches, self.beam = branches_of(trace)
        self.requests = RequestLog.empty(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, self.num_branches)
        self.replica_of = np.full(len(trace), -1, dtype=np.int64)
        self.prompt = trace.prompt_tokens
        self.output = trace.output_tokens
        n_prefill = options.prefill_replicas if options.disaggregated else 0
        n_main = options.decode_replicas if options.disaggregated else options.replicas
        self.prefill_requests: RequestLog | None = None
        self.prefill_replica_of: np.ndarray | None = None
        self.prefill_pool: list[Replica] = []
        if n_prefill:
            ones = np.ones(len(trace), dtype=np.int64)
            self.prefill_requests = RequestLog.empty(trace.arrival_s, trace.prompt_tokens, ones, ones)
            self.prefill_replica_of = np.full(len(trace), -1, dtype=np.int64)
            self.prefill_pool = [self._replica(r, self.prefill_requests, self._prefilled) for r in range(n_prefill)]
            self.links = [KVLink(options.link.bandwidth, options.link.latency_s) for _ in range(n_prefill)]
            self.prefill_router = make_router(options.router, options.router_seed)
        self.pool = [self._replica(n_prefill + r, self.requests, None) for r in range(n_main)]
        self.router = make_router(options.router, options.router_seed + 1 if n_prefill else options.router_seed)
        self._transfers: list[tuple[float, int, int]] = []  # (time the KV has arrived, order, request): a heap
        self._transfer_order = 0
        self._busy_heaps: dict[int, list[tuple[float, int]]] = {}  # pool (-1 prefill, 0 main) -> (clock, replica)
        self._heap_entry: dict[int, float] = {}  # replica -> the clock of its live heap entry
        self.num_routed = 0

    def _replica(self, index: int, requests: RequestLog, on_finish) -> Replica:
        o = self.options.replica
        allocator = make_allocator(o, self.budget)
        scheduler = make_scheduler(o, allocator)
        return Replica(
            index,
            self.trace,
            scheduler,
            self.cost_model,
            self.budget.bytes_per_token,
            o.model.max_model_len,
            requests,
            self.num_branches,
            self.beam,
            o.fast_forward,
            on_finish,
        )

    # --- the cluster's clock --------------------------------------------------------------------------------------
    def run(self) -> ClusterRun:
        trace = self.trace
        env = simpy.Environment(initial_time=float(trace.arrival_s[0]) if len(trace) else 0.0)
        env.process(self._events(env))
        collecting = gc.isenabled()
        gc.disable()  # as in Engine.run: nothing here makes reference cycles per event
        try:
            env.run()
        finally:
            if collecting:
                gc.enable()
        for replica in self.prefill_pool + self.pool:
            if replica.intake.num_not_taken:
                raise AssertionError(f"replica {replica.index} was left with requests it never took")
        if self.prefill_requests is not None:  # refused by the prefill pool: never reached a decode replica
            for i, reason in enumerate(self.prefill_requests.rejection):
                if reason is not None and self.requests.rejection[i] is None:
                    self.requests.rejection[i] = f"prefill: {reason}"
        return ClusterRun(
            self.options,
            trace,
            self.budget,
            self.prefill_pool + self.pool,
            self.requests,
            self.replica_of,
            self.prefill_requests,
            self.prefill_replica_of,
            self._transfer_figures(),
            {"prefill": self.prefill_router.name, "decode": self.router.name}
            if self.prefill_pool
            else {"all": self.router.name},
        )

    def _refused(self, i: int, max_len: int) -> bool:
        """Refuse request i before routing when it is longer than the model (every replica would)."""
        total = int(self.prompt[i]) + int(self.output[i])
        if total > max_len:
            self.requests.rejection[i] = (
                f"prompt + output = {total:,} tokens exceeds the max model length of {max_len:,}"
            )
            return True
        return False

    def _events(self, env: simpy.Environment):
        if not (self.prefill_pool or self.router.needs_state or self.interleave):
            yield from self._routed_up_front(env)
            return
        arrival = self.trace.arrival_s.tolist()
        n = len(arrival)
        transfers = self._transfers
        max_len = self.options.replica.model.max_model_len
        i = 0
        while True:
            if i < n:
                t = arrival[i]
                if transfers and transfers[0][0] < t:
                    t = transfers[0][0]
            elif transfers:
                t = transfers[0][0]
            elif self.prefill_pool and any(r.busy for r in self.prefill_pool):
                self._bring(self.prefill_pool, math.inf, -1)  # the last prompts: their transfers follow
                continue
            else:
                break
            if self.prefill_pool:  # every transfer whose KV arrives by t is known once the prefill pool is at t
                self._bring(self.prefill_pool, t, -1)
                if transfers and transfers[0][0] < t:
                    t = transfers[0][0]
            if t > env.now:
                yield env.timeout(t - env.now)
            if i < n and arrival[i] == t and not (transfers and transfers[0][0] < t):
                if self._refused(i, max_len):
                    pass
                elif self.prefill_pool:
                    self._route(self.prefill_pool, self.prefill_router, i, t, 1, self.prefill_replica_of, -1)
                else:
                    self._route(self.pool, self.router, i, t, int(self.output[i]), self.replica_of, 0)
                i += 1
                self._report(i, n)
            else:
                t, _, index = heapq.heappop(transfers)
                self._route(self.pool, self.router, index, t, int(self.output[index]), self.replica_of, 0)
        self._bring(self.pool, math.inf, 0)

    def _routed_up_front(self, env: simpy.Environment):
        """A router that reads no replica state decides every arrival without the replicas: each request is routed
        and handed to its replica's intake at once, and then each replica runs through its own arrivals, one replica
        after the other. Nothing else joins the replicas, so their records are those of interleaving them on one
        clock (tests/sim/cluster/test_cluster_properties.py checks it against interleave=True); it keeps each
        replica's objects together in memory, which makes a large cluster about as fast as its lone replays."""
        arrival = self.trace.arrival_s.tolist()
        n = len(arrival)
        max_len = self.options.replica.model.max_model_len
        pool, router, where = self.pool, self.router, self.replica_of
        for i in range(n):
            if self._refused(i, max_len):
                continue
            request = RoutedRequest(i, int(self.prompt[i]), int(self.output[i]), arrival[i], None)
            chosen = self._checked(router, router.route(request, pool), len(pool))
            pool[chosen].take(request, arrival[i], int(self.output[i]))
            where[i] = pool[chosen].index
        done = 0
        for replica in pool:
            replica.run_through()
            done += replica.routed_requests
            self._report(done, n, every=1)
        if n and arrival[-1] > env.now:
            yield env.timeout(arrival[-1] - env.now)  # the router's clock ends at the last arrival

    @staticmethod
    def _checked(router: Router, chosen, pool_size: int) -> int:
        if not isinstance(chosen, (int, np.integer)) or not 0 <= chosen < pool_size:
            raise UserError(f"router {router.name} chose replica {chosen!r} of a pool of {pool_size}")
        return int(chosen)

    def _route(
        self, pool: list[Replica], router: Router, i: int, t: float, output: int, where: np.ndarray, heap_id: int
    ) -> None:
        request = RoutedRequest(i, int(self.prompt[i]), int(self.output[i]), t, content_of(self.trace, i))
        if router.needs_state:
            self._bring(pool, t, heap_id)
        replica = pool[self._checked(router, router.route(request, pool), len(pool))]
        if heap_id < 0:  # a prefill replica: the prompt, as a one-token request of one sequence
            replica.deliver(request, t, 1, num_branches=1)
        elif self.prefill_pool:
            replica.deliver(request, t, output, transferred_tokens=request.prompt_tokens)
        else:
            replica.deliver(request, t, output)
        where[i] = replica.index
        if heap_id < 0 or router.needs_state:
            self._mark_busy(heap_id, replica)
        self.num_routed += 1

    def _bring(self, pool: list[Replica], t: float, heap_id: int) -> None:
        """Bring every replica of `pool` to `t` (run every iteration starting before it). A heap of the busy
        replicas' clocks (heap_id names the pool's) skips those already there."""
        heap = self._busy_heaps.setdefault(heap_id, [])
        if t == math.inf:
            for replica in pool:
                replica.advance(t)
            heap.clear()
            return
        entry = self._heap_entry
        while heap and heap[0][0] < t:
            when, r = heapq.heappop(heap)
            if entry.get(r) != when:  # superseded by a later entry of the same replica
                continue
            replica = pool[r - pool[0].index]
            replica.advance(t)
            if replica.busy:
                entry[r] = replica.now
                heapq.heappush(heap, (replica.now, r))
            else:
                del entry[r]

    def _mark_busy(self, heap_id: int, replica: Replica) -> None:
        """Keep a delivered-to replica's clock in its pool's heap (pools whose replicas are brought to events)."""
        if self._heap_entry.get(replica.index) != replica.now:
            self._heap_entry[replica.index] = replica.now
            heapq.heappush(self._busy_heaps.setdefault(heap_id, []), (replica.now, replica.index))

    def _prefilled(self, replica: Replica, done: list[Request], end_s: float) -> None:
        """A prefill replica computed these prompts by `end_s`: their KV crosses the replica's link."""
        link = self.links[replica.index]
        block = self.budget.block_size
        for request in done:
            blocks = -(-request.prompt_tokens // block)
            arrived = link.send(end_s, blocks * block * self.budget.bytes_per_token)
            heapq.heappush(self._transfers, (arrived, self._transfer_order, request.index))
            self._transfer_order += 1

    def _transfer_figures(self) -> dict:
        if not self.prefill_pool:
            return {}
        return KVLink.summarize(self.links)

    def _report(self, done: int, total: int, every: int = 1024) -> None:
        if self.progress is not None and (done % every == 0 or done == total):
            self.progress(done, total)


def simulate_cluster(
    trace: Trace,
    options: ClusterOptions,
    progress: ProgressCallback | None = None,
    cost_model: CostModel | None = None,
    interleave: bool = False,
) -> ClusterRun:
    """Replay `trace` through the cluster `options` describes (every replica priced by `cost_model` when given,
    else by the replica options' roofline or profile). interleave: run the replicas event by event even where the
    router reads no state (the same records, slower; for tests)."""
    return Cluster(trace, options, progress, cost_model, interleave).run()
