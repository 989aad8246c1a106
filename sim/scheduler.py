"""Iteration-level continuous batching with FCFS admission and recompute preemption.

The scheduler is plain Python: the simulator drives it with simulated time and the GPU harness with real time. Each
iteration is `schedule(now)` -> execute the returned `Batch` -> `finish(batch, now)`.

Token bookkeeping of one request with P prompt and O output tokens: the iteration that admits it prefills the P
prompt tokens (writes their KV) and emits output token 1; each later iteration writes the KV of the newest output
token and emits the next. After emitting token O it finishes, holding P + O - 1 tokens of KV: its *final length*.
A request preempted after emitting g tokens is later re-admitted with a prefill of P + g tokens (recompute), which
emits token g + 1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sim.allocators.base import KVAllocator


@dataclass(eq=False)
class Sequence:
    """A request inside the engine (waiting or running). seq_id is the request's index in the trace."""

    seq_id: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    generated: int = 0  # output tokens emitted so far
    preemptions: int = 0
    admitted_s: float | None = None  # first admission
    first_token_s: float | None = None

    @property
    def final_len(self) -> int:
        """KV tokens held when the request finishes: prompt + output - 1."""
        return self.prompt_tokens + self.output_tokens - 1

    @property
    def prefill_tokens(self) -> int:
        """Tokens the next admission must prefill: the prompt plus every token emitted before a preemption."""
        return self.prompt_tokens + self.generated


@dataclass
class Batch:
    """What one iteration executes.

    prefill: sequences admitted this iteration, each prefilling `prefill_tokens` tokens.
    decode: running sequences each writing the KV of one token and emitting one.
    preempted: sequences whose memory was taken back this iteration (they are not in the batch).
    copies: (source block, destination block) copies the allocator recorded (copy-on-write).
    """

    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    num_prefill_tokens: int = 0
    decode_context_tokens: int = 0  # KV tokens the decode sequences read (their lengths including the new token)
    prefill_attention_pairs: int = 0  # (query, key) pairs of causal prefill attention: sum of n (n + 1) / 2

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + len(self.decode)

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + len(self.decode)

    def __bool__(self) -> bool:
        return self.num_seqs > 0


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 256  # sequences in one iteration
    max_num_batched_tokens: int = 2048  # prompt tokens prefilled in one iteration


class Scheduler:
    """FCFS continuous batching over one allocator.

    Each iteration: every running sequence first gets room for one more token; when the allocator has none, the most
    recently admitted running sequence is preempted (its memory freed, it returns to the front of the queue) until
    there is room. Then, if nothing was preempted, waiting sequences are admitted in arrival order while
    max_num_seqs, max_num_batched_tokens and the allocator allow; the first that does not fit stops admission
    (no overtaking).
    """

    def __init__(self, allocator: KVAllocator, limits: SchedulerLimits):
        self.allocator = allocator
        self.limits = limits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_waiting_final_len(self) -> int | None:
        return self.waiting[0].final_len if self.waiting else None

    def schedule(self, now: float) -> Batch:
        batch = Batch()
        alloc = self.allocator
        running = self.running
        i = 0
        while i < len(running):
            seq = running[i]
            while not alloc.can_append(seq.seq_id, 1):
                victim = running.pop()
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                alloc.append(seq.seq_id, 1)
                i += 1
        batch.decode = list(running)
        batch.decode_context_tokens = sum(alloc.num_tokens(s.seq_id) for s in running)
        if not batch.preempted:
            self._admit(batch, now)
        batch.copies = alloc.take_copy_ops()
        return batch

    def _preempt(self, seq: Sequence, batch: Batch) -> None:
        self.allocator.free(seq.seq_id)
        seq.preemptions += 1
        self.num_preemptions += 1
        batch.preempted.append(seq)
        self.waiting.appendleft(seq)

    def _admit(self, batch: Batch, now: float) -> None:
        alloc = self.allocator
        budget = self.limits.max_num_batched_tokens
        while self.waiting and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            n = seq.prefill_tokens
            # A recompute longer than the budget may run alone, or it could never be re-admitted.
            if batch.num_prefill_tokens + n > budget and batch.prefill:
                break
            if not alloc.can_admit(seq.seq_id, n, seq.final_len):
                break
            self.waiting.popleft()
            alloc.admit(seq.seq_id, n, seq.final_len)
            if seq.admitted_s is None:
                seq.admitted_s = now
            self.running.append(seq)
            batch.prefill.append(seq)
            batch.num_prefill_tokens += n
            batch.prefill_attention_pairs += n * (n + 1) // 2

    def finish(self, batch: Batch, now: float) -> list[Sequence]:
        """Emit one token for every sequence of the batch; returns the sequences that finished (memory freed)."""
        finished: list[Sequence] = []
        for seq in batch.prefill:
            seq.generated += 1
            if seq.first_token_s is None:
                seq.first_token_s = now
            if seq.generated >= seq.output_tokens:
                finished.append(seq)
        for seq in batch.decode:
            seq.generated += 1
            if seq.generated >= seq.output_tokens:
                finished.append(seq)
        if finished:
            done = {id(s) for s in finished}
            self.running = [s for s in self.running if id(s) not in done]
            for seq in finished:
                self.allocator.free(seq.seq_id)
        return finished
