"""Iteration-level continuous batching with FCFS admission and recompute preemption.

The scheduler is plain Python: the simulator drives it with simulated time and the GPU harness with real time. Each
iteration is `schedule(now)` -> execute the returned `Batch` -> `finish(batch, now)`.

Token bookkeeping of one request with P prompt and O output tokens: the iteration that admits it prefills the P
prompt tokens (writes their KV) and emits output token 1; each later iteration writes the KV of the newest output
token and emits the next. After emitting token O it finishes, holding P + O - 1 tokens of KV: its *final length*.
A request preempted after emitting g tokens is later re-admitted with a prefill of P + g tokens (recompute), which
emits token g + 1.

A request with n parallel samples or a beam width k > 1 runs as a group of sequences ("branches"): its prompt is
prefilled once, then forked into n (or k) branches in the same iteration; every branch emits one token per iteration
and all finish together (lengths are forced). Beams follow the stochastic model of `BeamModel`. A multi-branch
request that is preempted restarts from its prompt (its branches cannot be recomputed from one history).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sim.allocators.base import KVAllocator, TokenContent

CHILD_ID_BASE = 1 << 40  # allocator ids of forked branches start here (a request's first branch uses its index)


@dataclass(eq=False, slots=True)
class Sequence:
    """A request inside the engine (waiting or running). seq_id is the request's index in the trace and the
    allocator id of its first branch."""

    seq_id: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    num_branches: int = 1  # parallel samples (n) or beams (beam_width)
    beam: bool = False
    content: TokenContent | None = None
    generated: int = 0  # output tokens emitted so far, while not running (running: Scheduler.generated)
    preemptions: int = 0
    admitted_s: float | None = None  # first admission
    first_token_s: float | None = None
    branches: list[int] = field(default_factory=list)  # allocator ids of the live branches
    cached_tokens: int = 0  # prefix-cache hit tokens of the latest admission
    # While running (see Scheduler: lazy rounds): generated = gen_base + the scheduler's round; it finishes at
    # finish_round; admit_no orders the running requests (admission order).
    gen_base: int = 0
    finish_round: int = -1
    admit_no: int = -1

    @property
    def final_len(self) -> int:
        """KV tokens held (by each branch) when the request finishes: prompt + output - 1."""
        return self.prompt_tokens + self.output_tokens - 1

    @property
    def prefill_tokens(self) -> int:
        """Tokens the next admission must hold: the prompt plus every token emitted before a preemption."""
        return self.prompt_tokens + self.generated


@dataclass(slots=True)
class Batch:
    """What one iteration executes.

    prefill: requests admitted this iteration; each computes `prefill_tokens - cached_tokens` new tokens on top of
        `cached_tokens` of context found in the prefix cache.
    decode: running requests; each of their branches writes the KV of one token and emits one.
    preempted: requests whose memory was taken back this iteration (they are not in the batch).
    copies: (source block, destination block) copies the allocator recorded (copy-on-write), to run first.
    """

    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    num_prefill_tokens: int = 0  # prompt tokens computed (after prefix-cache hits)
    prefill_context_tokens: int = 0  # cached tokens the prefills attend to
    num_prefill_seqs: int = 0  # branches of the prefilled requests
    num_decode_seqs: int = 0
    decode_context_tokens: int = 0  # KV tokens the decode branches read (their lengths including the new token)
    prefill_attention_pairs: int = 0  # (query, key) pairs of prefill attention: n (n + 1) / 2 + n x context

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs

    def __bool__(self) -> bool:
        return self.num_seqs > 0


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 256  # sequences (branches) in one iteration
    max_num_batched_tokens: int = 2048  # prompt tokens prefilled in one iteration


@dataclass
class BeamModel:
    """How beams survive and fork, one step at a time (seeded).

    After every token, each of a request's k beams is independently dropped with probability `replace_prob`, and
    each dropped beam is replaced by a fork of a surviving beam chosen uniformly (if every beam would be dropped, the
    first survives). Lineages therefore coalesce backwards in time like a Wright-Fisher population: the beams alive at
    any moment descend from a common ancestor a few steps back, so they share a long common history and differ only
    near the end — as real beam search does. Dropped beams free their blocks.
    """

    replace_prob: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.replace_prob <= 1:
            raise ValueError("beam replace probability must be in [0, 1]")
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def step(self, k: int) -> list[tuple[int, int]]:
        """(dropped beam index, surviving parent index) pairs for one step of k beams."""
        dropped = self.rng.random(k) < self.replace_prob
        survivors = [j for j in range(k) if not dropped[j]]
        if not survivors:
            survivors = [0]
            dropped[0] = False
        return [(j, survivors[int(self.rng.integers(len(survivors)))]) for j in range(k) if dropped[j]]


class Scheduler:
    """FCFS continuous batching over one allocator.

    Each iteration: every branch of every running request first gets room for one more token; when the allocator has
    none, the most recently admitted running request is preempted (its memory freed, it returns to the front of the
    queue) until there is room. Then, if nothing was preempted, waiting requests are admitted in arrival order while
    max_num_seqs, max_num_batched_tokens and the allocator allow; the first that does not fit stops admission
    (no overtaking).

    Lazy rounds: every running request emits one token per iteration, so rather than counting each request's tokens
    the scheduler counts iterations (`round`) and keeps each running request's progress as an offset from it
    (`Sequence.gen_base`); requests are found by the round at which they finish. An iteration then costs what changes
    in it (admissions, completions, preemptions, beam changes), not the number of running requests — where the
    allocator supports the same for its appends (`append_round`).
    """

    def __init__(self, allocator: KVAllocator, limits: SchedulerLimits, beam_model: BeamModel | None = None):
        self.allocator = allocator
        self.limits = limits
        self.beam_model = beam_model or BeamModel()
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # in admission order (a dict: removal by key is O(1))
        self.num_running_seqs = 0  # branches of the running requests
        self.num_preemptions = 0
        self.prefill_tokens_requested = 0  # tokens of every admission's prefill, before prefix-cache hits
        self.prefill_tokens_cached = 0  # of those, tokens found in the prefix cache
        self.round = 0  # iterations finished so far
        # round -> (admission number, request) of the requests finishing at it; entries of requests preempted since
        # are stale (another admission number), also when a request is re-admitted to finish at the same round
        self._finishing: dict[int, list[tuple[int, Sequence]]] = {}
        self._num_finishing: dict[int, int] = {}  # round -> how many of those are still running
        self._finish_rounds: list[int] = []  # heap of the keys of _finishing
        self._num_running_beams = 0  # running beam requests with more than one branch
        self._num_admitted = 0
        self._next_child_id = CHILD_ID_BASE

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_waiting_final_len(self) -> int | None:
        return self.waiting[0].final_len if self.waiting else None

    def generated(self, seq: Sequence) -> int:
        """Output tokens a request has emitted so far (by each branch)."""
        return seq.gen_base + self.round if seq in self.running else seq.generated

    def _branches_in_allocator_order(self) -> bool:
        """Whether the running branches, in the scheduler's order, are the allocator's live sequences in its live
        order (admission and fork order) — true unless beams replaced a branch in the middle of a request."""
        return not (self._num_running_beams and self.beam_model.replace_prob > 0)

    def schedule(self, now: float) -> Batch:
        batch = Batch()
        alloc = self.allocator
        total = None
        if not self.running:
            total = 0
        elif self._branches_in_allocator_order():
            total = alloc.append_round()
            if total is None:
                crossers = alloc.round_crossers()
                if crossers is not None:
                    self._preempt_for_round(crossers, batch)
                    total = alloc.append_round() if self.running else 0
                    assert total is not None, "the allocator refused a round that its free blocks cover"
        if total is None:
            total = self._append_one_by_one(batch)
        batch.decode = list(self.running)
        batch.num_decode_seqs = self.num_running_seqs
        batch.decode_context_tokens = total
        if not batch.preempted:
            self._admit(batch, now)
        batch.copies = alloc.take_copy_ops()
        return batch

    def _preempt_for_round(self, crossers: list[int], batch: Batch) -> None:
        """Preempt as the appends one by one would (see _append_one_by_one) when only the listed sequences (single-
        branch requests, in running order) need a block: at each of them, while no block is left for it, the most
        recently admitted request goes."""
        alloc = self.allocator
        taken = 0  # blocks the crossers before this one will take
        gone: set[int] = set()
        for seq_id in crossers:
            if seq_id in gone:
                continue
            while alloc.num_free_blocks - taken < 1:
                victim, _ = self.running.popitem()
                gone.update(victim.branches)
                self._preempt(victim, batch)
                if victim.seq_id == seq_id:
                    break
            if seq_id not in gone:
                taken += 1

    def _append_one_by_one(self, batch: Batch) -> int:
        """Room for one more token for every running branch, one at a time in running order, preempting the most
        recently admitted request while the allocator has none. Returns the tokens the running branches hold."""
        alloc = self.allocator
        running = list(self.running)
        seq_ids = [b for s in running for b in s.branches]
        total = alloc.append_each(seq_ids)
        if total is not None:
            return total
        i = 0
        while i < len(running):
            seq = running[i]
            ok = True
            for branch in seq.branches:
                while not alloc.can_append(branch, 1):
                    victim = running.pop()
                    del self.running[victim]
                    self._preempt(victim, batch)
                    if victim is seq:
                        ok = False
                        break
                if not ok:
                    break
                alloc.append(branch, 1)
            if ok:
                i += 1
        return sum(alloc.num_tokens(b) for s in running for b in s.branches)

    # --- fast-forward support ---------------------------------------------------------------------------------------
    def decode_rounds_without_events(self, through_finish: bool = False) -> int:
        """How many iterations from now would be pure decode with nothing else happening, as far as the scheduler
        can tell: no request finishes, no beam changes, and the head of the queue cannot be admitted (memory and
        sequence slots only shrink while nothing finishes). 0 when the next iteration may do more.

        through_finish: also count the iteration in which the next requests finish (it is pure decode as well: they
        finish at its end, see `finish_decode`)."""
        if not self.running:
            return 0
        heap, counts = self._finish_rounds, self._num_finishing
        while not counts.get(heap[0]):  # drop rounds whose requests all left (preempted)
            r = heapq.heappop(heap)
            counts.pop(r, None)
            self._finishing.pop(r, None)
        rounds = heap[0] - self.round - (0 if through_finish else 1)
        if rounds <= 0:
            return 0
        if self._num_running_beams and self.beam_model.replace_prob > 0:
            return 0
        if self.waiting:
            head = self.waiting[0]
            fits_slots = self.num_running_seqs + head.num_branches <= self.limits.max_num_seqs
            if fits_slots and (
                head.num_branches > 1
                or self.allocator.can_admit(head.seq_id, head.prefill_tokens, head.final_len, head.content)
            ):
                return 0
        return rounds

    def finishes_after(self, rounds: int) -> bool:
        """Whether requests finish at the end of the rounds-th iteration from now (while none finish before)."""
        return self._num_finishing.get(self.round + rounds, 0) > 0

    def running_seq_ids(self) -> list[int]:
        """Allocator ids of every running branch, in the order schedule() appends to them."""
        return [b for s in self.running for b in s.branches]

    def advance_decode(self, rounds: int) -> None:
        """Account `rounds` fast-forwarded decode iterations (the allocator was advanced by apply_decode); no request
        finishes in them (decode_rounds_without_events)."""
        self.round += rounds

    def finish_decode(self, now: float) -> list[Sequence]:
        """Account one fast-forwarded decode iteration at whose end (time `now`) requests may finish: `finish` of
        the batch that iteration ran (every running request, none admitted). Returns the finished requests."""
        return self.finish(Batch(decode=list(self.running), num_decode_seqs=self.num_running_seqs), now)

    def _start_running(self, seq: Sequence) -> None:
        """Put an admitted request into the running set: it emits its next token at the end of this iteration."""
        self.running[seq] = None
        self.num_running_seqs += len(seq.branches)
        seq.admit_no = self._num_admitted
        self._num_admitted += 1
        seq.gen_base = seq.generated - self.round
        r = seq.finish_round = self.round + seq.output_tokens - seq.generated
        bucket = self._finishing.get(r)
        if bucket is None:
            self._finishing[r] = [(seq.admit_no, seq)]
            self._num_finishing[r] = 1
            heapq.heappush(self._finish_rounds, r)
        else:
            bucket.append((seq.admit_no, seq))
            self._num_finishing[r] = self._num_finishing.get(r, 0) + 1
        if seq.beam and len(seq.branches) > 1:
            self._num_running_beams += 1

    def _stop_running(self, seq: Sequence) -> None:
        """Take a request out of the running set (it is already out of self.running): materialize its progress."""
        seq.generated = seq.gen_base + self.round
        r = seq.finish_round
        if r in self._num_finishing:
            self._num_finishing[r] -= 1
        seq.finish_round = -1
        self.num_running_seqs -= len(seq.branches)
        if seq.beam and len(seq.branches) > 1:
            self._num_running_beams -= 1

    def _preempt(self, seq: Sequence, batch: Batch) -> None:
        self._stop_running(seq)
        for branch in seq.branches:
            self.allocator.free(branch)
        seq.branches = []
        seq.preemptions += 1
        if seq.num_branches > 1:
            seq.generated = 0
        self.num_preemptions += 1
        batch.preempted.append(seq)
        self.waiting.appendleft(seq)

    def _new_child_id(self) -> int:
        self._next_child_id += 1
        return self._next_child_id

    def _place(self, seq: Sequence) -> bool:
        """Admit a request's first branch and fork the others; on failure undo everything and return False."""
        alloc = self.allocator
        n = seq.prefill_tokens
        if not alloc.can_admit(seq.seq_id, n, seq.final_len, seq.content):
            return False
        seq.cached_tokens = alloc.admit(seq.seq_id, n, seq.final_len, seq.content)
        seq.branches = [seq.seq_id]
        for _ in range(seq.num_branches - 1):
            child = self._new_child_id()
            if not alloc.can_fork(seq.seq_id, child):
                for branch in seq.branches:
                    alloc.free(branch)
                seq.branches = []
                alloc.take_copy_ops()
                return False
            alloc.fork(seq.seq_id, child)
            seq.branches.append(child)
        return True

    def _admit(self, batch: Batch, now: float) -> None:
        budget = self.limits.max_num_batched_tokens
        while self.waiting:
            seq = self.waiting[0]
            if self.num_running_seqs + seq.num_branches > self.limits.max_num_seqs:
                break
            n = seq.prefill_tokens
            # A recompute longer than the budget may run alone, or it could never be re-admitted.
            if batch.num_prefill_tokens + n > budget and batch.prefill:
                break
            if not self._place(seq):
                break
            self.waiting.popleft()
            if seq.admitted_s is None:
                seq.admitted_s = now
            self._start_running(seq)
            batch.prefill.append(seq)
            new = n - seq.cached_tokens
            self.prefill_tokens_requested += n
            self.prefill_tokens_cached += seq.cached_tokens
            batch.num_prefill_seqs += len(seq.branches)
            batch.num_prefill_tokens += new
            batch.prefill_context_tokens += seq.cached_tokens
            batch.prefill_attention_pairs += new * (new + 1) // 2 + new * seq.cached_tokens

    def finish(self, batch: Batch, now: float) -> list[Sequence]:
        """Emit one token for every branch of the batch (every running request); returns the requests that finished
        (memory freed), those admitted in this iteration first, each group in admission order."""
        self.round += 1
        r = self.round
        for seq in batch.prefill:
            if seq.first_token_s is None:
                seq.first_token_s = now
        self._num_finishing.pop(r, None)
        finished = [s for no, s in self._finishing.pop(r, ()) if s.admit_no == no and s.finish_round == r]
        if len(finished) > 1:
            newest = batch.prefill[0].admit_no if batch.prefill else self._num_admitted
            finished.sort(key=lambda s: (s.admit_no < newest, s.admit_no))
        if self._num_running_beams:
            for seq in batch.prefill + batch.decode:
                if seq.beam and seq.finish_round != r:
                    self._beam_step(seq)
        for seq in finished:
            del self.running[seq]
            self._stop_running(seq)
            for branch in seq.branches:
                self.allocator.free(branch)
            seq.branches = []
        return finished

    def _beam_step(self, seq: Sequence) -> None:
        alloc = self.allocator
        for dropped, parent in self.beam_model.step(len(seq.branches)):
            alloc.free(seq.branches[dropped])
            child = self._new_child_id()
            alloc.fork(seq.branches[parent], child)
            seq.branches[dropped] = child
