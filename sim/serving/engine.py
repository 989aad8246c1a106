"""The simulator's clock: a simpy process that replays a trace through a scheduler.

The engine process runs iterations whose lengths come from the cost model, keeping its own clock and advancing simpy's
by their sum every few hundred iterations and before it waits (see _sync); before each iteration it hands the
scheduler every request that has arrived, and when there is nothing to run it waits until the next arrival. (An arrival process with one event per request used to wake
it; a million requests cost a million events that way.) Nothing here knows about memory: that is the allocator's
business, reached through the scheduler.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate

import numpy as np
import simpy

from sim.allocators.base import BlockDecodePlan, KVAllocator, TokenContent
from sim.cost.roofline import CostModel
from sim.records.metrics import RequestLog, StepLog, record_iteration
from sim.serving.schedulers.vllm_v0 import Scheduler, Sequence
from sim.traces.model import Trace

ProgressCallback = Callable[[int, int], None]  # (requests done, requests total)


def branches_of(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Sequences per request and whether they are beams: beam_width when > 1, else n (parallel samples)."""
    ones = np.ones(len(trace), dtype=np.int64)
    n = trace.columns.get("n", ones)
    beam_width = trace.columns.get("beam_width", ones)
    beam = beam_width > 1
    return np.where(beam, beam_width, n), beam


def content_of(trace: Trace, i: int) -> TokenContent | None:
    """What request i's prompt tokens are: a shared prefix of its prefix group, or Mooncake's 512-token hash ids."""
    groups = trace.columns.get("prefix_group")
    if groups is not None and groups[i] >= 0 and trace.columns["prefix_tokens"][i] > 0:
        return TokenContent(((("group", int(groups[i])), int(trace.columns["prefix_tokens"][i])),))
    if trace.block_hashes is not None:
        ids = trace.hash_ids(i)
        if len(ids):
            return TokenContent(tuple((("hash", int(h)), trace.block_hash_tokens) for h in ids))
    return None


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
    ):
        self.trace = trace
        self.scheduler = scheduler
        self.allocator: KVAllocator = scheduler.allocator
        self.cost_model = cost_model
        self.bytes_per_token = bytes_per_token
        self.max_model_len = max_model_len
        self.progress = progress
        self.fast_forward = fast_forward and hasattr(cost_model, "decode_times")
        self.env = simpy.Environment(initial_time=float(trace.arrival_s[0]) if len(trace) else 0.0)
        self.steps = StepLog()
        self.num_branches, self.beam = branches_of(trace)
        self.requests = RequestLog.empty(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, self.num_branches)
        self._next = 0  # index of the next request not yet handed to the scheduler
        self._arrival: list[float] = trace.arrival_s.tolist()  # Python floats: cheap to index one at a time
        self._done = 0
        self.num_fast_forwarded = 0  # iterations computed in stretches
        self._pending: list[float] = []  # durations of iterations simpy's clock has not yet been advanced by

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
        return self.steps, self.requests

    def _reject_reason(self, prompt: int, output: int) -> str | None:
        if prompt + output > self.max_model_len:
            return (
                f"prompt + output = {prompt + output:,} tokens exceeds the max model length of {self.max_model_len:,}"
            )
        return self.allocator.never_fits(prompt + output - 1)

    def _take_arrivals(self, now: float) -> None:
        if self._next >= len(self._arrival) or self._arrival[self._next] > now:
            return
        trace, n = self.trace, len(self.trace)
        arrival, prompt, output = trace.arrival_s, trace.prompt_tokens, trace.output_tokens
        while self._next < n and arrival[self._next] <= now:
            i = self._next
            self._next += 1
            p, o = int(prompt[i]), int(output[i])
            reason = self._reject_reason(p, o)
            if reason is not None:
                self.requests.rejection[i] = reason
                self._count_done(1)
                continue
            self.scheduler.add(
                Sequence(
                    i,
                    p,
                    o,
                    float(arrival[i]),
                    num_branches=int(self.num_branches[i]),
                    beam=bool(self.beam[i]),
                    content=content_of(trace, i),
                )
            )

    def _count_done(self, n: int) -> None:
        self._done += n
        if self.progress is not None:
            self.progress(self._done, len(self.trace))

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
        env, sched, alloc = self.env, self.scheduler, self.allocator
        req, bpt = self.requests, self.bytes_per_token
        pending = self._pending
        now = env.now  # the engine's clock; simpy's catches up every SYNC_EVERY iterations and before it waits
        while True:
            self._take_arrivals(now)
            if not sched.has_work():
                yield from self._sync(now)
                if self._next >= len(self.trace):
                    return
                yield env.timeout(self._arrival[self._next] - env.now)  # idle until the next arrival
                now = env.now
                continue
            start = now
            batch = sched.schedule(start)
            if not batch:
                # Nothing runs: either the head of the queue cannot be placed even in an empty cache, or every running
                # request was preempted and the head is the one preempted last, while it ran alone: it cannot get the
                # memory it needs even alone. Either way it never will be served.
                for seq in batch.preempted:
                    req.preemptions[seq.seq_id] += 1
                seq = sched.waiting.popleft()
                how = "completed even alone in" if batch.preempted else "placed even in an empty"
                req.rejection[seq.seq_id] = (
                    f"cannot be {how} KV cache ({seq.num_branches} sequences of up to {seq.final_len:,} tokens)"
                )
                self._count_done(1)
                continue
            mem = alloc.memory(sched.next_waiting_final_len())
            unshared = alloc.held_without_sharing()
            duration = self.cost_model.step_time(batch)
            now = start + duration  # as simpy's timeout would add it
            pending.append(duration)
            if len(pending) >= self.SYNC_EVERY:
                yield from self._sync(now)
            finished = sched.finish(batch, now)
            record_iteration(
                self.steps, req, start, duration, now, batch, len(sched.waiting), mem, unshared, bpt, finished
            )
            if finished:
                self._count_done(len(finished))
            while self.fast_forward:  # stretches, one after the other while they end in completions only
                self._take_arrivals(now)
                rounds = sched.decode_rounds_without_events(through_finish=True)
                if rounds < 2:
                    break
                done, now = self._stretch(rounds, now)
                if len(pending) >= self.SYNC_EVERY:
                    yield from self._sync(now)
                if not done:
                    break

    def _decode_times(self, num_seqs: int, first_context: int, rounds: int) -> list[float]:
        """Durations of `rounds` pure-decode iterations of num_seqs sequences, the first reading first_context tokens
        (each later one num_seqs more), exactly as step_time would give them."""
        cost = self.cost_model
        if hasattr(cost, "decode_time_list"):
            return cost.decode_time_list(num_seqs, first_context, rounds)
        context = first_context + num_seqs * np.arange(rounds, dtype=np.int64)
        return np.asarray(cost.decode_times(num_seqs, context), dtype=np.float64).tolist()

    STRETCH_CHUNK = 16  # iterations whose times are computed before looking for the next arrival among them

    def _stretch_times(
        self, num_seqs: int, first_context: int, rounds: int, now: float
    ) -> tuple[list[float], list[float]]:
        """(durations, ends) of the next `rounds` pure-decode iterations from `now`, cut before the first one that
        would start at or after the next arrival (it must see that arrival). ends[0] is `now` and ends[i + 1] =
        ends[i] + durations[i], summed one after the other as simpy adds timeouts. Times are computed in chunks that
        double, since most stretches end at an arrival well before `rounds`."""
        limit = self._arrival[self._next] if self._next < len(self._arrival) else None
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

    def _stretch(self, rounds: int, now: float) -> tuple[int, float]:
        """Fast-forward up to `rounds` pure-decode iterations that follow, from the engine's time `now` (see the
        class docstring). Returns the iterations carried out and the engine's time after them; their durations join
        those simpy's clock has not been advanced by yet (see _sync)."""
        sched, alloc = self.scheduler, self.allocator
        seq_ids = sched.running_seq_ids()
        n = len(seq_ids)
        durations, ends = self._stretch_times(n, alloc.total_tokens(seq_ids) + n, rounds, now)
        if len(durations) < 2:
            return 0, now
        plan = alloc.run_decode(seq_ids, len(durations), sched.next_waiting_final_len())
        if plan is None or plan.rounds == 0:
            return 0, now
        rounds = plan.rounds
        waiting = len(sched.waiting)
        if sched.finishes_after(rounds):  # the last round is the one at whose end requests finish
            sched.advance_decode(rounds - 1)
            finished = sched.finish_decode(ends[rounds])
            finish_s = self.requests.finish_s
            for seq in finished:
                finish_s[seq.seq_id] = ends[rounds]
            if finished:
                self._count_done(len(finished))
        else:
            sched.advance_decode(rounds)
        if isinstance(plan, BlockDecodePlan):  # gathered with other stretches into rows later (StepLog)
            self.steps.extend_decode(ends, durations, n, waiting, self.bytes_per_token, plan)
        else:
            rows = np.empty((rounds, 14))  # STEP_COLUMNS
            rows[:, 0] = ends[:rounds]
            rows[:, 1] = durations[:rounds]
            rows[:, 2:8] = (n, waiting, 0, n, n, 0)
            rows[:, 8] = plan.token_states[:rounds]
            rows[:, 9] = plan.reserved[:rounds]
            rows[:, 10] = plan.internal_fragmentation[:rounds]
            rows[:, 11] = plan.external_fragmentation[:rounds]
            rows[:, 12] = plan.free[:rounds]
            rows[:, 13] = plan.unshared[:rounds]
            rows[:, 8:] *= self.bytes_per_token
            self.steps.extend(rows)
        self.num_fast_forwarded += rounds
        self._pending += durations[:rounds]
        return rounds, ends[rounds]
