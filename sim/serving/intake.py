"""Arrivals and rejections: the one place where requests of a trace enter a scheduler, shared by both clocks.

The simulator's engine (`sim.serving.engine`) and the GPU replay (`kernels.harness.replay`) each own a clock and call
the same `Intake`: `take_arrivals(now)` before every iteration, `reject_head(batch)` when the scheduler returns an empty
batch, `count_done(n)` for finished requests. A request is rejected when its prompt + output exceeds the max model
length, when it runs as more sequences than one iteration may hold (`--max-num-seqs`), when the allocator says it can
never be placed, or when it cannot run even in an empty KV cache or even alone (the empty-batch path); the reason is
recorded in the request log.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.allocators.base import TokenContent
from sim.records.requests import RequestLog
from sim.serving.request import Batch, Request
from sim.serving.schedulers.base import Scheduler
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


class Intake:
    """Hands a trace's requests to a scheduler as its driver's clock reaches their arrival times.

    `requests` is the per-request log both clocks fill (rejections here, times and preemptions by the driver);
    `next_index` is the first request not yet handed over and `arrival` the arrival times as Python floats (cheap to
    index one at a time in the engine's loop).
    """

    def __init__(
        self, trace: Trace, scheduler: Scheduler, max_model_len: int, progress: ProgressCallback | None = None
    ) -> None:
        self.trace = trace
        self.scheduler = scheduler
        self.max_model_len = max_model_len
        self.progress = progress
        self.num_branches, self.beam = branches_of(trace)
        self.requests = RequestLog.empty(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, self.num_branches)
        self.arrival: list[float] = trace.arrival_s.tolist()
        self.next_index = 0
        self.num_done = 0  # requests finished or rejected

    @property
    def exhausted(self) -> bool:
        """Whether every request has been handed over (or rejected)."""
        return self.next_index >= len(self.arrival)

    def next_arrival_s(self) -> float | None:
        """Arrival time of the next request not yet handed over (seconds), None when there is none."""
        return self.arrival[self.next_index] if self.next_index < len(self.arrival) else None

    def reject_reason(self, prompt: int, output: int, num_branches: int = 1) -> str | None:
        """Why a request of `prompt` + `output` tokens run as `num_branches` sequences can never be served, or None."""
        if prompt + output > self.max_model_len:
            return (
                f"prompt + output = {prompt + output:,} tokens exceeds the max model length of {self.max_model_len:,}"
            )
        max_num_seqs = self.scheduler.limits.max_num_seqs
        if num_branches > max_num_seqs:
            return (
                f"runs as {num_branches:,} sequences (parallel samples or beams), more than --max-num-seqs "
                f"{max_num_seqs:,} in one iteration"
            )
        return self.scheduler.allocator.never_fits(prompt + output - 1, prompt)

    def take_arrivals(self, now: float) -> None:
        """Queue (or reject) every request that arrived at or before `now`."""
        arrival = self.arrival
        if self.next_index >= len(arrival) or arrival[self.next_index] > now:
            return
        while self.next_index < len(arrival) and arrival[self.next_index] <= now:
            self.next_index += 1
            self._hand_over(self.next_index - 1)

    def _hand_over(self, position: int) -> None:
        """Queue (or reject) the request at `position` of this intake's arrivals (here: the trace's row)."""
        trace = self.trace
        self.queue(
            position, int(trace.prompt_tokens[position]), int(trace.output_tokens[position]), self.arrival[position]
        )

    def queue(
        self,
        i: int,
        prompt: int,
        output: int,
        arrival_s: float,
        transferred_tokens: int = 0,
        num_branches: int | None = None,
    ) -> None:
        """Hand request i (trace row) to the scheduler as a request of `prompt` + `output` tokens that arrived at
        `arrival_s`, or reject it with the reason. transferred_tokens: prompt tokens whose KV another replica
        computed; num_branches: sequences it runs as (None: the trace's); both for prefill/decode disaggregation."""
        n_branches = int(self.num_branches[i]) if num_branches is None else num_branches
        reason = self.reject_reason(prompt, output, n_branches)
        if reason is not None:
            self.requests.rejection[i] = reason
            self.count_done(1)
            return
        self.scheduler.add(
            Request(
                i,
                prompt,
                output,
                arrival_s,
                num_branches=n_branches,
                beam=bool(self.beam[i]),
                content=content_of(self.trace, i),
                transferred_tokens=transferred_tokens,
            )
        )

    def reject_head(self, batch: Batch) -> Request:
        """The empty-batch path: nothing runs, so the head of the queue never will. Either it cannot be placed even
        in an empty cache, or every running request was preempted and the head is the one preempted last, while it
        ran alone: it cannot get the memory it needs even alone. Counts the batch's preemptions, rejects the head and
        returns it."""
        for request in batch.preempted:
            self.requests.preemptions[request.index] += 1
        request = self.scheduler.waiting.popleft()
        if request.swapped is not None:  # its blocks on the host will never come back (nor go, if not yet gone)
            batch.transfers = self.scheduler.allocator.discard_swapped(request.swapped, batch.transfers)
            request.swapped = None
        how = "completed even alone in" if batch.preempted else "placed even in an empty"
        self.requests.rejection[request.index] = (
            f"cannot be {how} KV cache ({request.num_branches} sequences of up to {request.final_len:,} tokens)"
        )
        self.count_done(1)
        return request

    def finished(self, requests: list[Request], end_s: float) -> None:
        """Account requests that finished at `end_s` (seconds): the engine calls this, and a cluster's intake
        (`sim.cluster.intake`) also learns where they were."""
        self.count_done(len(requests))

    def count_done(self, n: int) -> None:
        """Account `n` requests finished or rejected (and report progress)."""
        self.num_done += n
        if self.progress is not None:
            self.progress(self.num_done, len(self.arrival))
