"""The vLLM V1 scheduler: one token budget per iteration, chunked prefill, no prefill or decode phase.

Modelled on `vllm/v1/core/sched/scheduler.py` (`Scheduler.schedule`, read at vllm-project/vllm commit 00024d31),
`vllm/v1/core/kv_cache_manager.py` (`get_computed_blocks`, `allocate_slots`) and `vllm/config/scheduler.py` (vLLM
0.11); README "Scheduler models" lists every simplification. Each iteration:

1. Running requests, in running order (the order they were admitted from the queue), each catch up on what they
   have not computed: a decoding request one token per branch, a request whose prompt is still being prefilled the
   rest of it, capped by `long_prefill_token_threshold` (when > 0) and by what is left of the token budget
   `max_num_batched_tokens`. When the allocator has no room, the last request of the running order is preempted
   (recompute: it returns to the front of the queue with nothing computed) until there is room or the request
   itself was the last. The loop stops when the budget is spent; requests after that point wait an iteration.
2. If nothing was preempted, waiting requests are admitted in order while the budget lasts and fewer than
   `max_num_seqs` sequences run: each first takes its prefix-cache hits (at most all but the last token of its
   prompt), then a chunk of what is left, capped as above. The first that does not fit stops admission.

A request emits a token in the iteration that computes the last token of its prompt and in every iteration after it
in which it is scheduled; a partial chunk emits nothing. The decode-only iterations and their preemption rule are
those of `VllmV0Scheduler`, whose lazy rounds and fast-forward this class reuses: while no prompt is being
prefilled, every running request is scheduled (the budget is at least max_num_seqs), which is v0's decode round.
"""

from __future__ import annotations

from heapq import merge

from sim.allocators.base import KVAllocator
from sim.hardware.gpus import GpuSpec
from sim.hardware.models import ModelSpec
from sim.serving.beam import BeamModel
from sim.serving.request import Batch, Request
from sim.serving.schedulers.base import SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler
from sim.units import GiB

BIG_GPU_BYTES = 70 * GiB  # vLLM's threshold for its larger default limits


def _run_order(request: Request) -> int:
    return request.run_order


class VllmV1Scheduler(VllmV0Scheduler):
    """vLLM V1's scheduler over one allocator (see the module docstring).

    `running` (inherited) holds the requests whose prompt is computed, with v0's lazy rounds; `prefilling` those
    admitted whose prompt is not yet all computed (`Request.computed` tokens so far). Both are kept in running order.
    """

    name = "vllm-v1"
    description = "vLLM's V1 engine: one token budget per iteration, chunked prefill, running requests first"
    fast_forward = True
    options = frozenset({"long_prefill_token_threshold"})
    chunked_prefill = True  # a prompt may be computed over several iterations, within the token budget
    accepts_transferred_kv = True  # admits a request whose prompt another replica computed (Request.transferred_tokens)

    @classmethod
    def default_limits(cls, model: ModelSpec, gpu: GpuSpec) -> tuple[int, int]:
        """vLLM's defaults for `vllm serve` (EngineArgs.get_batch_defaults, OpenAI API server context): 1024
        sequences and 8192 tokens per iteration on GPUs with at least 70 GiB other than the A100, 256 and 2048 on
        the others."""
        if gpu.memory_bytes >= BIG_GPU_BYTES and "a100" not in gpu.name.lower():
            return 1024, 8192
        return 256, 2048

    def __init__(self, allocator: KVAllocator, limits: SchedulerLimits, beam_model: BeamModel | None = None):
        super().__init__(allocator, limits, beam_model)
        self.prefilling: dict[Request, None] = {}
        self._num_prefilling_seqs = 0  # sequences the prefilling requests will run as (their num_branches)
        self._next_run_order = 0
        self._stalled: list[Request] = []  # running requests the budget did not reach in the current iteration
        self._paused: set[Request] = set()  # running requests stalled in an earlier iteration, not yet scheduled
        self._misordered: set[Request] = set()  # running, with branches forked after a later admission

    # --- queue state ----------------------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def _chunk(self, remaining: int, budget: int) -> int:
        """Tokens of a prompt with `remaining` tokens to compute that one iteration computes, `budget` left."""
        threshold = self.limits.long_prefill_token_threshold
        if 0 < threshold < remaining:
            remaining = threshold
        return min(remaining, budget)

    def _seqs_in_use(self) -> int:
        return self.num_running_seqs + self._num_prefilling_seqs

    # --- one iteration --------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch:
        batch = Batch()
        budget = self.limits.max_num_batched_tokens
        if self.prefilling or self.num_running_seqs > budget:  # (a budget under max_num_seqs: validation refuses it)
            budget = self._schedule_running(batch, budget)
        else:
            batch.decode_context_tokens = self._decode_round(batch)
            batch.decode = list(self.running)
            batch.num_decode_seqs = self.num_running_seqs
            budget -= self.num_running_seqs
            if self._paused:  # every running request is scheduled: the stalled ones emit again
                batch.resumed += [r for r in batch.decode if r in self._paused]
                self._paused.clear()
        if not batch.preempted:
            self._admit_waiting(batch, budget, now)
        batch.copies = self.allocator.take_copy_ops()
        batch.transfers = self.allocator.take_transfers()
        return batch

    def _branches_in_allocator_order(self) -> bool:
        return not self._misordered and super()._branches_in_allocator_order()

    def _schedule_running(self, batch: Batch, budget: int) -> int:
        """Step 1 of the module docstring while some prompt is being prefilled; returns the budget left."""
        alloc = self.allocator
        order = list(merge(self.running, sorted(self.prefilling, key=_run_order), key=_run_order))
        decode_tokens = 0
        i = 0
        while i < len(order):
            request = order[i]
            if budget <= 0:
                self._stalled.extend(r for r in order[i:] if r in self.running)
                break
            prefilling = request in self.prefilling
            if prefilling:
                new = self._chunk(request.prefill_tokens - request.computed, budget)
                need = [(request.index, new)]
            else:
                new = len(request.branches)
                if new > budget:  # a group's branches run together (vLLM would schedule some of them)
                    self._stalled.append(request)
                    i += 1
                    continue
                need = [(b, 1) for b in request.branches]
            placed = True
            for k, (seq_id, tokens) in enumerate(need):
                while not alloc.can_append(seq_id, tokens):
                    victim = order.pop()
                    self._preempt_any(victim, batch, mid_append=victim is request and k > 0)
                    if victim is request:
                        placed = False
                        break
                if not placed:
                    break
                alloc.append(seq_id, tokens)
            if not placed:
                break
            budget -= new
            if prefilling:
                self._add_chunk(batch, request, new)
                if request.computed == request.prefill_tokens and not self._complete_prefill(
                    request, new, order, batch
                ):
                    break
            else:
                batch.decode.append(request)
                batch.num_decode_seqs += new
                decode_tokens += sum(alloc.num_tokens(b) for b in request.branches)
                if request in self._paused:
                    self._paused.discard(request)
                    batch.resumed.append(request)
            i += 1
        batch.decode_context_tokens = decode_tokens
        batch.stalled = list(self._stalled)
        self._paused.update(self._stalled)
        return budget

    def _add_chunk(self, batch: Batch, request: Request, new: int, sign: int = 1) -> None:
        """Account a prompt chunk of `new` tokens computed by one sequence on top of request.computed tokens of
        context (sign -1: take back the chunk just added)."""
        if sign > 0:
            batch.add_prefill(request, request.computed, new)
            request.computed += new
            return
        request.computed -= new
        batch.remove_prefill(request, request.computed, new)

    def _complete_prefill(self, request: Request, new: int, order: list[Request], batch: Batch) -> bool:
        """The last prompt chunk (`new` tokens) of a prefilling request is placed: fork its other branches and let it
        run (it emits its first token at the end of this iteration). False when the request itself had to be
        preempted for the forks (its chunk is then taken back)."""
        alloc = self.allocator
        while request.num_branches > len(request.branches):
            child = self._new_child_id()
            while not alloc.can_fork(request.index, child):
                victim = order.pop()
                if victim is request:
                    self._add_chunk(batch, request, new, sign=-1)
                self._preempt_any(victim, batch)
                if victim is request:
                    return False
            alloc.fork(request.index, child)
            request.branches.append(child)
            if request.run_order != self._next_run_order - 1:
                self._misordered.add(request)
        del self.prefilling[request]
        self._num_prefilling_seqs -= request.num_branches
        batch.num_prefill_seqs += len(request.branches) - 1  # counted once when its chunk was added
        if request.preemptions:
            batch.resumed.append(request)
        self._start_running(request)  # now the last of `running`
        if len(self.running) > 1:
            newest = reversed(self.running)
            next(newest)
            if next(newest).run_order > request.run_order:  # admitted before requests already running
                self.running = dict.fromkeys(sorted(self.running, key=_run_order))
        return True

    def _preempt_any(self, request: Request, batch: Batch, mid_append: bool = False) -> None:
        """Preempt a running request (recompute, or swap: `VllmV0Scheduler._preempt`) or a prefilling one (always
        recompute: its prompt is not all computed, and vLLM v0, whose swap this follows, had no partial prompts)."""
        if request in self.prefilling:
            del self.prefilling[request]
            self._num_prefilling_seqs -= request.num_branches
            for branch in request.branches:
                self.allocator.free(branch)
            request.branches = []
            request.computed = 0
            request.preemptions += 1
            self.num_preemptions += 1
            batch.preempted.append(request)
            self.waiting.appendleft(request)
            return
        # victims come from the end of the running order, which this iteration has not reached: nothing to take back
        del self.running[request]
        self._preempt(request, batch, mid_append)

    def _stop_running(self, request: Request) -> None:
        super()._stop_running(request)
        self._misordered.discard(request)
        self._paused.discard(request)

    def _computed_at_admission(self, request: Request, total: int) -> tuple[int, int]:
        """(prefix-cache hit tokens, tokens computed before the first chunk) of admitting `request` now, `total`
        tokens to hold: the hits, or the tokens another replica computed and sent (prefilled elsewhere: at most all
        but the last prompt token, which is computed here, as vLLM's disaggregated decode does)."""
        hits = self.allocator.prefix_hit_tokens(request.index, total, request.content)
        return hits, max(hits, min(request.transferred_tokens, total - 1))

    def _admit_waiting(self, batch: Batch, budget: int, now: float) -> None:
        """Step 2 of the module docstring."""
        alloc = self.allocator
        while self.waiting and budget > 0:
            request = self.waiting[0]
            if self._seqs_in_use() + request.num_branches > self.limits.max_num_seqs:
                break
            if request.swapped is not None:  # back from the host: it decodes, one token per branch
                if request.num_branches > budget:
                    break
                request.run_order = self._next_run_order
                if not self._swap_in(request, batch):
                    break
                self._next_run_order += 1
                budget -= request.num_branches
                continue
            total = request.prefill_tokens
            hits, start = self._computed_at_admission(request, total)
            new = self._chunk(total - start, budget)
            if not alloc.can_admit(request.index, start + new, request.final_len, request.content):
                break
            cached = alloc.admit(request.index, start + new, request.final_len, request.content)
            assert cached == hits, f"{type(alloc).__name__}: prefix_hit_tokens said {hits}, admit found {cached}"
            request.transferred_tokens = 0  # a later admission (after a preemption) recomputes them
            request.branches = [request.index]
            complete = start + new == total
            if complete and request.num_branches > 1 and not self._fork_branches(request):
                break
            self.waiting.popleft()
            request.run_order = self._next_run_order
            self._next_run_order += 1
            if request.admitted_s is None:
                request.admitted_s = now
            request.cached_tokens = cached
            self.prefill_tokens_requested += total
            self.prefill_tokens_cached += cached
            batch.num_prefill_seqs += len(request.branches) - 1  # forked branches; _add_chunk counts the first
            request.computed = start
            self._add_chunk(batch, request, new)
            if complete:
                self._start_running(request)
                if request.preemptions:
                    batch.resumed.append(request)
            else:
                self.prefilling[request] = None
                self._num_prefilling_seqs += request.num_branches
            budget -= new

    def finish(self, batch: Batch, now: float) -> list[Request]:
        """As `VllmV0Scheduler.finish`; running requests the budget did not reach emit nothing in this iteration."""
        if self._stalled:
            for request in self._stalled:
                self._postpone(request)
            self._stalled = []
        return super().finish(batch, now)

    def _postpone(self, request: Request) -> None:
        """Shift a running request's lazy-round progress by one iteration (it was not scheduled in this one)."""
        request.gen_base -= 1
        old = request.finish_round
        self._num_finishing[old] -= 1
        self._start_finishing(request, old + 1)

    # --- fast-forward ---------------------------------------------------------------------------------------------
    def decode_rounds_without_events(self, through_finish: bool = False) -> int:
        if self.prefilling or self.num_running_seqs > self.limits.max_num_batched_tokens:
            return 0
        return super().decode_rounds_without_events(through_finish)

    def _head_may_be_admitted(self, head: Request) -> bool:
        budget = self.limits.max_num_batched_tokens - self.num_running_seqs
        if budget <= 0 or self._seqs_in_use() + head.num_branches > self.limits.max_num_seqs:
            return False
        total = head.prefill_tokens
        start = self._computed_at_admission(head, total)[1]
        new = self._chunk(total - start, budget)
        return head.num_branches > 1 or self.allocator.can_admit(head.index, start + new, head.final_len, head.content)
