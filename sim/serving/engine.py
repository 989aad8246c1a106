"""The simulator's clock: a simpy process that replays a trace through a scheduler.

The engine process runs iterations whose lengths come from the cost model, keeping its own clock and advancing simpy's
by their sum every few hundred iterations and before it waits (see _sync); before each iteration the intake
(`sim.serving.intake`, shared with the GPU replay) hands the scheduler every request that has arrived, and when there
is nothing to run the engine waits until the next arrival: one simpy event per idle period, not one per request.
Nothing here knows about memory: that is the allocator's business, reached through the scheduler.
"""

from __future__ import annotations

import gc
import math
from bisect import bisect_left
from collections import deque
from itertools import accumulate

import simpy

from sim.allocators.base import KVAllocator
from sim.allocators.fast_paths import BlockDecodePlan
from sim.cost.base import CostModel
from sim.records.requests import RequestLog
from sim.records.steps import StepLog, record_iteration
from sim.serving.intake import Intake, ProgressCallback
from sim.serving.schedulers.base import Scheduler
from sim.traces.model import Trace


class Engine:
    """Replays one trace. `run()` returns the per-iteration and per-request records.

    An iteration starting at time t sees every request that arrived at or before t. With fast_forward, stretches of
    iterations in which nothing happens but token counts growing (no arrival, admission, preemption, copy-on-write or
    beam change; blocks may be taken while they last) are computed in one pass; a stretch may end with the iteration
    at whose end requests finish (it is pure decode too), and the next stretch then follows without an iteration run
    on its own. Every record is exactly what the step-by-step run (fast_forward=False) writes.
    """

    def __init__(
        self,
        trace: Trace,
        scheduler: Scheduler,
        cost_model: CostModel,
        bytes_per_token: int,
        max_model_len: int,
        progress: ProgressCallback | None = None,
        fast_forward: bool = True,
        intake: Intake | None = None,
    ):
        self.trace = trace
        self.scheduler = scheduler
        self.allocator: KVAllocator = scheduler.allocator
        self.cost_model = cost_model
        self.bytes_per_token = bytes_per_token
        self.max_model_len = max_model_len
        self.fast_forward = fast_forward and scheduler.fast_forward
        self.env = simpy.Environment(initial_time=float(trace.arrival_s[0]) if len(trace) else 0.0)
        self.steps = StepLog()
        self.intake = intake if intake is not None else Intake(trace, scheduler, max_model_len, progress)
        self.requests: RequestLog = self.intake.requests
        self.num_fast_forwarded = 0  # iterations computed in stretches
        self._pending: list[float] = []  # durations of iterations simpy's clock has not yet been advanced by
        self.now = self.env.now  # the engine's clock (seconds); simpy's catches up in _sync
        self._carried: list = []  # host-link copies of an empty iteration, run with the next one

    def run(self) -> tuple[StepLog, RequestLog]:
        self.env.process(self._engine())
        # A replay allocates millions of short-lived objects and creates no reference cycles per iteration, and while
        # a long queue waits the cyclic collector keeps re-scanning it: about 7% of a 1,000,000-request replay, for
        # nothing (peak memory is the same without it). It is paused for the replay and restored afterwards.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.env.run()
        finally:
            if collecting:
                gc.enable()
        if self._carried:  # copies of a last iteration that ran nothing: no iteration follows to run them
            self.allocator.drop_transfers(self._carried)
            self._carried = []
        return self.steps, self.requests

    def keep_no_simpy_clock(self) -> None:
        """Drive this engine by `advance` alone, its iterations kept off simpy's clock: a replica of a cluster, whose
        one clock is the cluster's (`sim.cluster`)."""
        self._pending = deque(maxlen=0)  # type: ignore[assignment]  # durations are dropped as they come

    SYNC_EVERY = 256  # iterations between simpy timeouts while busy

    def _sync(self, now: float):
        """Bring simpy's clock to `now`, the engine's clock after the iterations in self._pending: one timeout for
        them all, or one per iteration where that single sum would not land exactly on `now` (it is computed the
        way simpy adds the timeouts, one after the other)."""
        env, pending = self.env, self._pending
        if not pending:
            return
        delay = now - env.now
        if env.now + delay == now:
            yield env.timeout(delay)
        else:
            for d in pending:
                yield env.timeout(d)
        pending.clear()

    def _engine(self):
        """The simpy process of a replay on its own: runs the engine (see advance), brings simpy's clock along, and
        waits for the next arrival whenever there is nothing to run."""
        env, intake = self.env, self.intake
        while True:
            self.advance(max_pending=self.SYNC_EVERY)
            yield from self._sync(self.now)
            if self.scheduler.has_work():  # advance returned to let simpy's clock catch up
                continue
            if intake.exhausted:
                return
            yield env.timeout(intake.arrival[intake.next_index] - env.now)  # idle until the next arrival
            self.now = env.now

    def advance(self, until: float = math.inf, max_pending: float = math.inf) -> None:
        """Run every iteration that starts before `until` (seconds) on the engine's clock `self.now`. Returns when
        there is nothing to run at `self.now` (no request waits or runs, and none handed over has arrived), when
        the next iteration would start at or after `until`, or once `max_pending` iteration durations have not been
        added to simpy's clock (see _sync). A replica of a cluster (`sim.cluster`) is driven by this alone."""
        sched, alloc, intake = self.scheduler, self.allocator, self.intake
        req, bpt = self.requests, self.bytes_per_token
        pending = self._pending
        now = self.now
        while True:
            intake.take_arrivals(now)
            if now >= until or not sched.has_work():
                break
            start = now
            batch = sched.schedule(start)
            if self._carried:  # host-link copies of an iteration that ran nothing run with this one
                batch.transfers = self._carried + batch.transfers
                self._carried = []
            if not batch:
                intake.reject_head(batch)
                self._carried = batch.transfers
                continue
            mem = alloc.memory(sched.next_waiting_final_len(), sched.next_waiting_prefill_tokens())
            unshared = alloc.held_without_sharing()
            duration = self.cost_model.step_time(batch)
            now = start + duration  # as simpy's timeout would add it
            pending.append(duration)
            finished = sched.finish(batch, now)
            record_iteration(
                self.steps, req, start, duration, now, batch, len(sched.waiting), mem, unshared, bpt, finished
            )
            if finished:
                intake.finished(finished, now)
            while self.fast_forward:  # stretches, one after the other while they end in completions only
                intake.take_arrivals(now)
                if now >= until:
                    break
                rounds = sched.decode_rounds_without_events(through_finish=True)
                if rounds < 2:
                    break
                done, now = self._stretch(rounds, now, until)
                if not done:
                    break
            if len(pending) >= max_pending:
                break
        self.now = now

    def _decode_times(self, num_seqs: int, first_context: int, rounds: int) -> list[float]:
        """Durations of `rounds` pure-decode iterations of num_seqs sequences, the first reading first_context tokens
        (each later one num_seqs more), exactly as step_time would give them."""
        return self.cost_model.decode_time_list(num_seqs, first_context, rounds)

    STRETCH_CHUNK = 16  # iterations whose times are computed before looking for the next arrival among them

    def _stretch_times(
        self, num_seqs: int, first_context: int, rounds: int, now: float, until: float = math.inf
    ) -> tuple[list[float], list[float]]:
        """(durations, ends) of the next `rounds` pure-decode iterations from `now`, cut before the first one that
        would start at or after the next arrival (it must see that arrival) or `until`. ends[0] is `now` and
        ends[i + 1] = ends[i] + durations[i], summed one after the other as simpy adds timeouts. Times are computed in
        chunks that double, since most stretches end at an arrival well before `rounds`."""
        limit = self.intake.next_arrival_s()
        if until < math.inf and (limit is None or until < limit):
            limit = until
        durations: list[float] = []
        ends = [now]
        chunk = self.STRETCH_CHUNK
        while len(durations) < rounds:
            k = len(durations)
            more = self._decode_times(num_seqs, first_context + num_seqs * k, min(chunk, rounds - k))
            durations += more
            sums = accumulate(more, initial=ends[-1])
            next(sums)  # the initial value, already in ends
            ends += sums
            if limit is not None and ends[len(durations) - 1] >= limit:  # the last start: the arrival is in there
                cut = bisect_left(ends, limit, 0, len(durations))  # iterations starting before the arrival
                del durations[cut:], ends[cut + 1 :]
                break
            chunk *= 2
        return durations, ends

    def _stretch(self, rounds: int, now: float, until: float = math.inf) -> tuple[int, float]:
        """Fast-forward up to `rounds` pure-decode iterations that follow, from the engine's time `now` (see the
        class docstring). Returns the iterations carried out and the engine's time after them; their durations join
        those simpy's clock has not been advanced by yet (see _sync)."""
        sched, alloc = self.scheduler, self.allocator
        seq_ids = sched.running_seq_ids()
        n = len(seq_ids)
        durations, ends = self._stretch_times(n, alloc.total_tokens(seq_ids) + n, rounds, now, until)
        if len(durations) < 2:
            return 0, now
        plan = alloc.run_decode(
            seq_ids, len(durations), sched.next_waiting_final_len(), sched.next_waiting_prefill_tokens()
        )
        if plan is None or plan.rounds == 0:
            return 0, now
        rounds = plan.rounds
        waiting = len(sched.waiting)
        if sched.finishes_after(rounds):  # the last round is the one at whose end requests finish
            sched.advance_decode(rounds - 1)
            finished = sched.finish_decode(ends[rounds])
            finish_s = self.requests.finish_s
            for request in finished:
                finish_s[request.index] = ends[rounds]
            if finished:
                self.intake.finished(finished, ends[rounds])
        else:
            sched.advance_decode(rounds)
        if isinstance(plan, BlockDecodePlan):  # gathered with other stretches into rows later (StepLog)
            self.steps.extend_decode(ends, durations, n, waiting, self.bytes_per_token, plan)
        else:
            self.steps.extend_stretch(ends, durations, n, waiting, self.bytes_per_token, plan)
        self.num_fast_forwarded += rounds
        self._pending += durations[:rounds]
        return rounds, ends[rounds]
