"""What every scheduler model shares: its limits, and the interface the engine and the GPU harness drive.

Each iteration is `schedule(now)` -> execute the returned `Batch` -> `finish(batch, now)`. The simulator's engine drives
a scheduler with simulated time and the GPU harness with real time; both hand it arrivals through `add` (see
`sim.serving.intake`). Fast-forward (pure-decode stretches computed in one pass) uses the optional methods of
`FastForwardScheduler`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from sim.allocators.base import KVAllocator
from sim.serving.request import Batch, Request


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 256  # sequences (branches) in one iteration
    max_num_batched_tokens: int = 2048  # tokens computed in one iteration (v0: prompt tokens only)
    long_prefill_token_threshold: int = 0  # vllm-v1: most prompt tokens one request computes per iteration (0: any)


class Scheduler(Protocol):
    """The interface of a scheduler model (one module per engine model under sim.serving.schedulers)."""

    name: str
    fast_forward: bool  # whether it implements FastForwardScheduler
    allocator: KVAllocator
    limits: SchedulerLimits
    waiting: deque[Request]  # requests not running, in the order they will be admitted
    num_preemptions: int
    prefill_tokens_requested: int  # tokens of every admission's prefill, before prefix-cache hits
    prefill_tokens_cached: int  # of those, tokens found in the prefix cache

    def add(self, request: Request) -> None:
        """Queue an arrived request."""
        ...

    def has_work(self) -> bool:
        """Whether any request waits or runs."""
        ...

    def next_waiting_final_len(self) -> int | None:
        """Final length (tokens) of the request at the head of the queue, None when none waits."""
        ...

    def next_waiting_prefill_tokens(self) -> int | None:
        """Tokens the request at the head of the queue prefills when admitted, None when none waits."""
        ...

    def schedule(self, now: float) -> Batch:
        """Decide the next iteration: make room for the running requests (preempting if needed), admit waiting ones.
        An empty batch means the head of the queue can never run (see `sim.serving.intake.Intake.reject_head`)."""
        ...

    def finish(self, batch: Batch, now: float) -> list[Request]:
        """Account the end of an iteration at `now`; returns the requests that finished (their memory freed)."""
        ...


class FastForwardScheduler(Scheduler, Protocol):
    """Optional: what the engine's fast-forward needs. A scheduler without these methods is run step by step."""

    def decode_rounds_without_events(self, through_finish: bool = False) -> int:
        """Iterations from now that are pure decode with nothing else happening (0: the next one may do more)."""
        ...

    def finishes_after(self, rounds: int) -> bool:
        """Whether requests finish at the end of the rounds-th iteration from now."""
        ...

    def running_seq_ids(self) -> list[int]:
        """Allocator ids of every running sequence, in the order schedule() appends to them."""
        ...

    def advance_decode(self, rounds: int) -> None:
        """Account `rounds` fast-forwarded decode iterations in which nothing finishes."""
        ...

    def finish_decode(self, now: float) -> list[Request]:
        """Account one fast-forwarded decode iteration at whose end requests may finish; returns them."""
        ...
