"""The vLLM v0 scheduler as the vLLM paper (SOSP 2023) measured it: iteration-level continuous batching, whole-prompt
prefill at admission, prefills first, FCFS admission, recompute preemption.

The scheduler is plain Python (see `sim.serving.schedulers.base` for the interface both clocks drive).

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

from sim.allocators.base import KVAllocator
from sim.hardware.gpus import GpuSpec
from sim.hardware.models import ModelSpec
from sim.serving.beam import BeamModel
from sim.serving.request import Batch, Request
from sim.serving.schedulers.base import SchedulerLimits

CHILD_ID_BASE = 1 << 40  # allocator ids of forked branches start here (a request's first branch uses its index)


class VllmV0Scheduler:
    """FCFS continuous batching over one allocator.

    Each iteration: every branch of every running request first gets room for one more token; when the allocator has
    none, the most recently admitted running request is preempted (its memory freed, it returns to the front of the
    queue) until there is room. Then, if nothing was preempted, waiting requests are admitted in arrival order while
    max_num_seqs, max_num_batched_tokens and the allocator allow; the first that does not fit stops admission
    (no overtaking).

    Lazy rounds: every running request emits one token per iteration, so rather than counting each request's tokens
    the scheduler counts iterations (`round`) and keeps each running request's progress as an offset from it
    (`Request.gen_base`); requests are found by the round at which they finish. An iteration then costs what changes
    in it (admissions, completions, preemptions, beam changes), not the number of running requests — where the
    allocator supports the same for its appends (`append_round`).
    """

    name = "vllm-v0"
    description = "vLLM as the 2023 paper measured it: whole prompts at admission, prefills first, recompute"
    fast_forward = True
    #: options of ReplayOptions this scheduler reads beyond max_num_seqs and max_num_batched_tokens
    options: frozenset[str] = frozenset()
    chunked_prefill = False  # a prompt is computed whole in the iteration that admits it

    @classmethod
    def default_limits(cls, model: ModelSpec, gpu: GpuSpec) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens) when the user gives none: vLLM v0's 256 sequences, and a budget of
        max(max model length, 2048) tokens, as vLLM without chunked prefill."""
        return 256, max(model.max_model_len, 2048)

    def __init__(self, allocator: KVAllocator, limits: SchedulerLimits, beam_model: BeamModel | None = None):
        self.allocator = allocator
        self.limits = limits
        self.beam_model = beam_model or BeamModel()
        self.waiting: deque[Request] = deque()
        self.running: dict[Request, None] = {}  # in admission order (a dict: removal by key is O(1))
        self.num_running_seqs = 0  # branches of the running requests
        self.num_preemptions = 0
        self.preemption = "recompute"  # or "swap": to the allocator's host tier (sim.allocators.host_tier)
        self.prefill_tokens_requested = 0  # tokens of every admission's prefill, before prefix-cache hits
        self.prefill_tokens_cached = 0  # of those, tokens found in the prefix cache
        self.round = 0  # iterations finished so far
        # round -> (admission number, request) of the requests finishing at it; entries of requests preempted since
        # are stale (another admission number), also when a request is re-admitted to finish at the same round
        self._finishing: dict[int, list[tuple[int, Request]]] = {}
        self._num_finishing: dict[int, int] = {}  # round -> how many of those are still running
        self._finish_rounds: list[int] = []  # heap of the keys of _finishing
        self._num_running_beams = 0  # running beam requests with more than one branch
        self._num_admitted = 0
        self._next_child_id = CHILD_ID_BASE

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_waiting_final_len(self) -> int | None:
        return self.waiting[0].final_len if self.waiting else None

    def next_waiting_prefill_tokens(self) -> int | None:
        return self.waiting[0].prefill_tokens if self.waiting else None

    def generated(self, request: Request) -> int:
        """Output tokens a request has emitted so far (by each branch)."""
        return request.gen_base + self.round if request in self.running else request.generated

    def _branches_in_allocator_order(self) -> bool:
        """Whether the running branches, in the scheduler's order, are the allocator's live sequences in its live
        order (admission and fork order) — true unless beams replaced a branch in the middle of a request."""
        return not (self._num_running_beams and self.beam_model.replace_prob > 0)

    def schedule(self, now: float) -> Batch:
        batch = Batch()
        total = self._decode_round(batch)
        batch.decode = list(self.running)
        batch.num_decode_seqs = self.num_running_seqs
        batch.decode_context_tokens = total
        if not batch.preempted:
            self._admit(batch, now)
        batch.copies = self.allocator.take_copy_ops()
        batch.transfers = self.allocator.take_transfers()
        return batch

    def _decode_round(self, batch: Batch) -> int:
        """Room for one more token for every branch of every running request, preempting the most recently admitted
        request while there is none (recorded in `batch`). Returns the tokens the running branches then hold."""
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
        return total

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
                if victim.index == seq_id:
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
            request = running[i]
            ok = True
            for k, branch in enumerate(request.branches):
                while not alloc.can_append(branch, 1):
                    victim = running.pop()
                    del self.running[victim]
                    # the request itself, after some of its branches took their token: recompute (see _preempt)
                    self._preempt(victim, batch, mid_append=victim is request and k > 0)
                    if victim is request:
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
        finish at its end, see `finish_decode`). With a host tier, also no host copy (`_rounds_without_host_copies`):
        those are recorded iteration by iteration."""
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
        if self.waiting and self._head_may_be_admitted(self.waiting[0]):
            return 0
        if getattr(self.allocator, "host", None) is not None:
            return self._rounds_without_host_copies(rounds)
        return rounds

    def _rounds_without_host_copies(self, rounds: int) -> int:
        """At most `rounds` pure-decode iterations that copy nothing over the host link: none while a swapped
        request heads the queue (it comes back when room frees up), and with a prefix cache only as many as the
        free blocks that evict no cached content can serve (an eviction goes to the host). Blocks needed are
        counted high (one more per sequence, for a copy-on-write of a shared last block), so the cap is safe."""
        if self.waiting and self.waiting[0].swapped is not None:
            return 0
        pool = getattr(self.allocator, "pool", None)
        if pool is None or not pool.retain_cached:
            return rounds
        bs = self.allocator.block_size
        tokens = [self.allocator.num_tokens(seq_id) for seq_id in self.running_seq_ids()]

        def blocks_needed(r: int) -> int:
            return sum(-(-(t + r) // bs) + (-t // bs) + 1 for t in tokens)

        free = pool.free_before_cached(blocks_needed(rounds))
        lo, hi = 0, rounds  # the most rounds whose blocks the free uncached blocks cover
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if blocks_needed(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _head_may_be_admitted(self, head: Request) -> bool:
        """Whether the next pure-decode iteration might admit `head` (False only when it surely cannot)."""
        if self.num_running_seqs + head.num_branches > self.limits.max_num_seqs:
            return False
        return head.num_branches > 1 or self.allocator.can_admit(
            head.index, head.prefill_tokens, head.final_len, head.content
        )

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

    def finish_decode(self, now: float) -> list[Request]:
        """Account one fast-forwarded decode iteration at whose end (time `now`) requests may finish: `finish` of
        the batch that iteration ran (every running request, none admitted). Returns the finished requests."""
        return self.finish(Batch(decode=list(self.running), num_decode_seqs=self.num_running_seqs), now)

    def _start_running(self, request: Request) -> None:
        """Put an admitted request into the running set: it emits its next token at the end of this iteration."""
        self.running[request] = None
        self.num_running_seqs += len(request.branches)
        request.admit_no = self._num_admitted
        self._num_admitted += 1
        request.gen_base = request.generated - self.round
        self._start_finishing(request, self.round + request.output_tokens - request.generated)
        if request.beam and len(request.branches) > 1:
            self._num_running_beams += 1

    def _start_finishing(self, request: Request, r: int) -> None:
        """File a running request under the round `r` at whose end it finishes."""
        request.finish_round = r
        bucket = self._finishing.get(r)
        if bucket is None:
            self._finishing[r] = [(request.admit_no, request)]
            self._num_finishing[r] = 1
            heapq.heappush(self._finish_rounds, r)
        else:
            bucket.append((request.admit_no, request))
            self._num_finishing[r] = self._num_finishing.get(r, 0) + 1

    def _stop_running(self, request: Request) -> None:
        """Take a request out of the running set (it is already out of self.running): materialize its progress."""
        request.generated = request.gen_base + self.round
        r = request.finish_round
        if r in self._num_finishing:
            self._num_finishing[r] -= 1
        request.finish_round = -1
        self.num_running_seqs -= len(request.branches)
        if request.beam and len(request.branches) > 1:
            self._num_running_beams -= 1

    def _preempt(self, request: Request, batch: Batch, mid_append: bool = False) -> None:
        """Take a running request's memory back (it is already out of self.running) and put it at the front of the
        queue: swapped to the host tier (`preemption` "swap", when the host has room), else for recompute.
        mid_append: the request is its own victim after some of its branches were given this iteration's token,
        which will not be computed: it is recomputed (swapping would keep a slot that was never written)."""
        self._stop_running(request)
        alloc = self.allocator
        if self.preemption == "swap" and not mid_append and alloc.can_swap_out(request.branches):
            request.swapped = alloc.swap_out(request.branches)
        else:
            if self.preemption == "swap" and not mid_append:
                alloc.host.swap_fallbacks += 1
            for branch in request.branches:
                alloc.free(branch)
            if request.num_branches > 1:
                request.generated = 0
        request.branches = []
        request.preemptions += 1
        self.num_preemptions += 1
        batch.preempted.append(request)
        self.waiting.appendleft(request)

    def _swap_in(self, request: Request, batch: Batch) -> bool:
        """Bring a swapped request at the head of the queue back from the host and give each of its branches its
        next token (it decodes in this iteration, as vLLM v0's swapped-in requests do). False if there is no room."""
        alloc = self.allocator
        swapped = request.swapped
        if not alloc.can_swap_in(swapped):
            return False
        alloc.swap_in(swapped)
        request.swapped = None
        request.branches = list(swapped.seq_ids)
        for branch in request.branches:
            alloc.append(branch, 1)
        self.waiting.popleft()
        self._start_running(request)
        batch.decode.append(request)
        batch.num_decode_seqs += len(request.branches)
        batch.decode_context_tokens += sum(alloc.num_tokens(b) for b in request.branches)
        batch.resumed.append(request)
        return True

    def _new_child_id(self) -> int:
        self._next_child_id += 1
        return self._next_child_id

    def _place(self, request: Request) -> bool:
        """Admit a request's first branch and fork the others; on failure undo everything and return False."""
        alloc = self.allocator
        n = request.prefill_tokens
        if not alloc.can_admit(request.index, n, request.final_len, request.content):
            return False
        request.cached_tokens = alloc.admit(request.index, n, request.final_len, request.content)
        request.branches = [request.index]
        return self._fork_branches(request)

    def _fork_branches(self, request: Request) -> bool:
        """Fork an admitted request's first branch into its other branches; on failure free them all (undoing the
        admission) and return False."""
        alloc = self.allocator
        for _ in range(request.num_branches - 1):
            child = self._new_child_id()
            if not alloc.can_fork(request.index, child):
                for branch in request.branches:
                    alloc.free(branch)
                request.branches = []
                alloc.take_copy_ops()
                return False
            alloc.fork(request.index, child)
            request.branches.append(child)
        return True

    def _admit(self, batch: Batch, now: float) -> None:
        budget = self.limits.max_num_batched_tokens
        while self.waiting:
            request = self.waiting[0]
            if self.num_running_seqs + request.num_branches > self.limits.max_num_seqs:
                break
            if request.swapped is not None:
                if not self._swap_in(request, batch):
                    break
                continue
            n = request.prefill_tokens
            # A recompute longer than the budget may run alone, or it could never be re-admitted.
            if batch.num_prefill_tokens + n > budget and batch.prefill:
                break
            if not self._place(request):
                break
            self.waiting.popleft()
            if request.admitted_s is None:
                request.admitted_s = now
            self._start_running(request)
            batch.add_prefill(request, request.cached_tokens, n - request.cached_tokens, len(request.branches))
            if request.preemptions:  # it emits again at the end of this iteration
                batch.resumed.append(request)
            self.prefill_tokens_requested += n
            self.prefill_tokens_cached += request.cached_tokens

    def finish(self, batch: Batch, now: float) -> list[Request]:
        """Emit one token for every branch of the batch (every running request); returns the requests that finished
        (memory freed), those admitted in this iteration first, each group in admission order."""
        self.round += 1
        r = self.round
        # a prefill emits its first token only when it runs (finish_round is set): a partial prompt chunk emits none
        for request in batch.prefill:
            if request.first_token_s is None and request.finish_round >= 0:
                request.first_token_s = now
        self._num_finishing.pop(r, None)
        finished = [s for no, s in self._finishing.pop(r, ()) if s.admit_no == no and s.finish_round == r]
        if len(finished) > 1:
            newest = min((p.admit_no for p in batch.prefill if p.finish_round >= 0), default=self._num_admitted)
            finished.sort(key=lambda s: (s.admit_no < newest, s.admit_no))
        if self._num_running_beams:
            for request in batch.prefill + batch.decode:
                if request.beam and request.finish_round >= 0 and request.finish_round != r:
                    self._beam_step(request)
        for request in finished:
            del self.running[request]
            self._stop_running(request)
            for branch in request.branches:
                self.allocator.free(branch)
            request.branches = []
        return finished

    def _beam_step(self, request: Request) -> None:
        alloc = self.allocator
        for dropped, parent in self.beam_model.step(len(request.branches)):
            alloc.free(request.branches[dropped])
            child = self._new_child_id()
            alloc.fork(request.branches[parent], child)
            request.branches[dropped] = child
