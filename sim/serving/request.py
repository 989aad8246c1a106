"""The neutral types the scheduler, the engine and the GPU harness share: a `Request` and the `Batch` one iteration
executes. Token counts are tokens; times are seconds on the clock of whoever drives the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.allocators.base import TokenContent
from sim.allocators.host_tier import TO_GPU, TO_HOST


@dataclass(eq=False, slots=True)
class Request:
    """A request inside the engine (waiting or running). It runs as one sequence, or as `num_branches` sequences
    (branches) for parallel samples and beams; `branches` holds their allocator ids. `index` is the request's row in
    the trace and the allocator id of its first branch."""

    index: int
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
    # Chunked prefill (vllm-v1): tokens of the current admission computed so far while its prompt is still being
    # prefilled, and its place in the running order (the order of admissions from the queue).
    computed: int = 0
    run_order: int = -1
    # Prefill/decode disaggregation (sim.cluster): prompt tokens whose KV a prefill replica computed and sent; the
    # first admission starts after them (at most all but the last prompt token), a later one recomputes.
    transferred_tokens: int = 0
    # Swap preemption (sim.allocators.host_tier): the allocator's record of its branches while they are on the host
    # (a SwappedRequest); None otherwise.
    swapped: object | None = None

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

    prefill: requests computing prompt tokens this iteration; prefill_spans[i] = (first, end) are the positions
        prefill[i] computes, on top of `first` tokens of context (prefix-cache hits, earlier prompt chunks). vllm-v0
        admits a whole prompt: (cached_tokens, prefill_tokens).
    decode: running requests; each of their branches writes the KV of one token and emits one.
    preempted: requests whose memory was taken back this iteration (they are not in the batch).
    stalled: running requests the token budget did not reach this iteration (vllm-v1): they emit nothing in it.
    resumed: requests that emit this iteration for the first time since they were preempted or stalled (their
        inter-token gap spans the pause; see sim.records.vllm_bench).
    copies: (source block, destination block) copies the allocator recorded (copy-on-write), to run first.
    transfers: host-link copies (sim.allocators.host_tier.Transfer: evicted blocks to the host, host hits back, swaps
        out and in), to run first, in order.
    """

    prefill: list[Request] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    prefill_spans: list[tuple[int, int]] = field(default_factory=list)
    stalled: list[Request] = field(default_factory=list)
    resumed: list[Request] = field(default_factory=list)
    num_prefill_tokens: int = 0  # prompt tokens computed (after prefix-cache hits)
    prefill_context_tokens: int = 0  # cached tokens the prefills attend to
    num_prefill_seqs: int = 0  # branches of the prefilled requests
    num_decode_seqs: int = 0
    decode_context_tokens: int = 0  # KV tokens the decode branches read (their lengths including the new token)
    prefill_attention_pairs: int = 0  # (query, key) pairs of prefill attention: n (n + 1) / 2 + n x context
    transfers: list = field(default_factory=list)

    @property
    def bytes_to_host(self) -> int:
        return sum(t.nbytes for t in self.transfers if t.direction == TO_HOST)

    @property
    def bytes_to_gpu(self) -> int:
        return sum(t.nbytes for t in self.transfers if t.direction == TO_GPU)

    def add_prefill(self, request: Request, context: int, new: int, seqs: int = 1) -> None:
        """A prompt chunk: `new` tokens of `request` computed by `seqs` sequences on top of `context` tokens, with
        the counters the cost model reads."""
        self.prefill.append(request)
        self.prefill_spans.append((context, context + new))
        self._count_prefill(context, new, seqs, 1)

    def remove_prefill(self, request: Request, context: int, new: int, seqs: int = 1) -> None:
        """Take back the chunk `add_prefill(request, context, new, seqs)` added."""
        i = self.prefill.index(request)
        del self.prefill[i], self.prefill_spans[i]
        self._count_prefill(context, new, seqs, -1)

    def _count_prefill(self, context: int, new: int, seqs: int, sign: int) -> None:
        self.num_prefill_seqs += sign * seqs
        self.num_prefill_tokens += sign * new
        self.prefill_context_tokens += sign * context
        self.prefill_attention_pairs += sign * (new * (new + 1) // 2 + new * context)

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs

    def __bool__(self) -> bool:
        return self.num_seqs > 0
