"""The vllm-v1 scheduler on tiny hand-worked cases: chunk boundaries, the token budget split between decodes and
chunks, a preemption step with no admission, prefix hits capped at the last token, the long-prefill threshold, and
running requests the budget does not reach. Every expected value is worked out in the comments."""

from __future__ import annotations

import pytest

from sim.allocators import ContiguousMax, PagedAllocator, PagedPrefixCache, TokenContent
from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions, replay, validate_options
from sim.serving.request import Request
from sim.serving.schedulers import SchedulerLimits, VllmV0Scheduler, VllmV1Scheduler, resolve_scheduler
from sim.traces.readers import read_trace


def request(index: int, prompt: int, output: int, branches: int = 1, content: TokenContent | None = None) -> Request:
    return Request(index, prompt, output, 0.0, num_branches=branches, content=content)


def scheduler(budget: int, num_blocks: int = 64, block_size: int = 4, threshold: int = 0, seqs: int = 16, alloc=None):
    alloc = alloc or PagedAllocator(num_blocks, block_size, 1024)
    return VllmV1Scheduler(alloc, SchedulerLimits(seqs, budget, threshold))


def step(s: VllmV1Scheduler, now: float):
    batch = s.schedule(now)
    finished = s.finish(batch, now + 0.5)
    return batch, finished


def test_chunk_boundaries() -> None:
    # prompt 20, budget 8: chunks of 8, 8 and 4 tokens; the third computes the last prompt token and emits token 1,
    # then one token per iteration: token 3 at the end of iteration 5, holding 20 + 3 - 1 = 22 tokens
    s = scheduler(budget=8)
    a = request(0, 20, 3)
    s.add(a)
    held, chunks, contexts = [], [], []
    for t in range(1, 4):
        batch, finished = step(s, t)
        chunks.append(batch.num_prefill_tokens)
        contexts.append(batch.prefill_context_tokens)
        held.append(s.allocator.num_tokens(0))
        assert not finished
    assert chunks == [8, 8, 4] and contexts == [0, 8, 16] and held == [8, 16, 20]
    assert a.first_token_s == 3.5  # the end of iteration 3, not earlier: partial chunks emit nothing
    assert a.admitted_s == 1
    batch, finished = step(s, 4)
    assert (batch.num_prefill_tokens, batch.num_decode_seqs, s.allocator.num_tokens(0)) == (0, 1, 21)
    batch, finished = step(s, 5)
    assert finished == [a] and not s.has_work()


def test_budget_split_between_decodes_and_chunks() -> None:
    # budget 8: iteration 1 admits A (prompt 4) whole and B (prompt 12) with the 4 tokens left; iteration 2: A
    # decodes 1, B computes 7 on 4 of context; iteration 3: A decodes 1, B computes its last token on 11 of context
    s = scheduler(budget=8)
    a, b = request(0, 4, 10), request(1, 12, 5)
    s.add(a)
    s.add(b)
    batch, _ = step(s, 1)
    assert batch.prefill == [a, b] and batch.num_prefill_tokens == 8 and batch.num_prefill_seqs == 2
    assert a.first_token_s == 1.5 and b.first_token_s is None
    batch, _ = step(s, 2)
    assert batch.decode == [a] and batch.prefill == [b]
    assert (batch.num_decode_seqs, batch.num_prefill_tokens, batch.num_batched_tokens) == (1, 7, 8)
    assert batch.prefill_context_tokens == 4
    assert batch.prefill_attention_pairs == 7 * 8 // 2 + 7 * 4  # causal pairs of the chunk + chunk x context
    assert batch.decode_context_tokens == 5  # A's prompt and the KV of its first output token, written now: 4 + 1
    batch, _ = step(s, 3)
    assert (batch.num_decode_seqs, batch.num_prefill_tokens, batch.prefill_context_tokens) == (1, 1, 11)
    assert b.first_token_s == 3.5


def test_preemption_step_admits_nothing() -> None:
    # 4 blocks of 4 tokens. A and B (prompt 6) take 2 blocks each in iteration 1 and emit token 1; iterations 2 and 3
    # write tokens 7 and 8 of each (their second blocks fill up). In iteration 4, A needs a third block and none is
    # free: the last running request, B, is preempted. Its 2 blocks are free after A takes one, and C (1 token)
    # would fit, but an iteration that preempted admits nothing.
    s = scheduler(budget=64, num_blocks=4)
    a, b, c = request(0, 6, 6), request(1, 6, 6), request(2, 1, 1)
    s.add(a)
    s.add(b)
    step(s, 1)
    s.add(c)  # arrives after iteration 1 admitted A and B (4 of 4 blocks in use: C waits)
    for t in (2, 3):
        batch, _ = step(s, t)
        assert batch.num_decode_seqs == 2 and not batch.preempted and not batch.prefill
    batch, _ = step(s, 4)
    assert batch.preempted == [b] and batch.decode == [a] and batch.prefill == []
    assert list(s.waiting) == [b, c] and s.allocator.num_free_blocks == 1
    assert b.generated == 3 and b.preemptions == 1  # tokens 1-3 emitted in iterations 1-3
    # iteration 5: B needs 6 + 3 = 9 tokens (3 blocks) and one is free: it waits, and C behind it too (no overtaking)
    batch, _ = step(s, 5)
    assert batch.prefill == [] and list(s.waiting) == [b, c]


def test_prefix_hit_is_capped_at_the_last_token() -> None:
    # block size 4, an 8-token shared prefix held by A. B's prompt is exactly that prefix: at most 7 tokens may hit,
    # so only the first full block (4 tokens) does and 4 are computed. C's prompt is the prefix and 1 more token:
    # both blocks (8 tokens) hit and 1 token is computed.
    shared = TokenContent(((("group", 1), 8),))
    s = scheduler(budget=64)
    a, b, c = request(0, 8, 20, content=shared), request(1, 8, 20, content=shared), request(2, 9, 20, content=shared)
    s.add(a)
    step(s, 1)
    s.add(b)
    batch, _ = step(s, 2)
    assert (batch.num_prefill_tokens, batch.prefill_context_tokens, b.cached_tokens) == (4, 4, 4)
    s.add(c)
    batch, _ = step(s, 3)
    assert (batch.num_prefill_tokens, batch.prefill_context_tokens, c.cached_tokens) == (1, 8, 8)
    assert (s.prefill_tokens_requested, s.prefill_tokens_cached) == (8 + 8 + 9, 0 + 4 + 8)


def test_chunked_prompt_blocks_carry_their_content() -> None:
    # A's 12-token prompt is a shared prefix, prefilled in chunks of 4 (budget 4): the blocks written by the second
    # and third chunks hold prefix tokens too, so C (the prefix and 1 more token) then hits all 3 blocks.
    shared = TokenContent(((("group", 7), 12),))
    s = scheduler(budget=4)
    a = request(0, 12, 30, content=shared)
    s.add(a)
    for t in (1, 2, 3):
        step(s, t)
    assert a.first_token_s == 3.5
    c = request(1, 13, 5, content=shared)
    s.add(c)
    step(s, 4)  # A decodes 1 token; C is admitted: its 12 prefix tokens hit, 1 is computed
    assert c.cached_tokens == 12


def test_long_prefill_threshold_caps_each_chunk() -> None:
    # threshold 4, budget 16: A (prompt 10) computes 4, 4, 2; B (prompt 3) is admitted whole in iteration 1 with
    # the budget A's capped chunk left (16 - 4 = 12)
    s = scheduler(budget=16, threshold=4)
    a, b = request(0, 10, 2), request(1, 3, 2)
    s.add(a)
    s.add(b)
    batch, _ = step(s, 1)
    assert batch.prefill == [a, b] and batch.num_prefill_tokens == 4 + 3
    batch, _ = step(s, 2)
    assert (batch.num_prefill_tokens, batch.num_decode_seqs) == (4, 1)
    batch, finished = step(s, 3)
    assert (batch.num_prefill_tokens, batch.num_decode_seqs) == (2, 0) and a.first_token_s == 3.5
    assert finished == []  # B finished at the end of iteration 2 (its 2 tokens)


def test_running_requests_past_the_budget_wait() -> None:
    # budget 8, threshold 4. Iteration 1: Q (prompt 40) computes 4; P (prompt 2, 4 parallel samples) is admitted
    # whole (2 tokens) and forked; B and C (prompt 1) take the last 2 tokens. Running order: Q, P, B, C.
    # Iteration 2: Q 4, P's 4 branches 4: the budget is spent and B and C get nothing (no token emitted).
    # Iteration 3: the same; P emits its third token and finishes. Iteration 4: Q 4, B 1, C 1: B and C emit their
    # second token and finish.
    s = scheduler(budget=8, threshold=4)
    q, p, b, c = request(0, 40, 2), request(1, 2, 3, branches=4), request(2, 1, 2), request(3, 1, 2)
    for r in (q, p, b, c):
        s.add(r)
    batch, _ = step(s, 1)
    assert batch.prefill == [q, p, b, c] and batch.num_batched_tokens == 8 and batch.num_prefill_seqs == 7
    batch, finished = step(s, 2)
    assert batch.decode == [p] and batch.num_decode_seqs == 4 and batch.num_prefill_tokens == 4 and finished == []
    assert s.generated(b) == 1 and s.generated(c) == 1
    assert batch.stalled == [b, c] and batch.resumed == []
    batch, finished = step(s, 3)
    assert finished == [p] and batch.stalled == [b, c]
    batch, finished = step(s, 4)
    assert batch.decode == [b, c] and finished == [b, c]
    assert batch.resumed == [b, c] and batch.stalled == []  # they emit again, after a pause of two iterations


def test_contiguous_allocator_reserves_at_the_first_chunk() -> None:
    # contiguous-max reserves max_model_len (32 tokens) at admission, whatever the chunk: 4 blocks of 8
    alloc = ContiguousMax(8, 8, 32)
    s = scheduler(budget=8, alloc=alloc)
    s.add(request(0, 20, 2))
    step(s, 1)
    assert alloc.memory().free == 64 - 32 and alloc.num_tokens(0) == 8


def test_prefix_cache_allocator_reports_the_hits_admit_finds() -> None:
    alloc = PagedPrefixCache(16, 4, 256)
    shared = TokenContent(((("g", 0), 10),))
    assert alloc.prefix_hit_tokens(0, 10, shared) == 0
    alloc.admit(0, 10, 12, shared)
    assert alloc.prefix_hit_tokens(1, 10, shared) == 8  # two full blocks; the third is partial
    assert alloc.prefix_hit_tokens(1, 9, shared) == 8
    assert alloc.prefix_hit_tokens(1, 8, shared) == 4  # the last token is always computed
    assert alloc.admit(1, 10, 12, shared) == 8


MODEL = resolve_model("llama-2-7b", None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"scheduler": "vllm-v9"}, "unknown scheduler"),
        ({"scheduler": "nosuchmodule:Cls"}, "cannot import scheduler module"),
        ({"scheduler": "vllm-v0", "long_prefill_token_threshold": 16}, "applies to vllm-v1"),
        ({"scheduler": "vllm-v1", "max_num_batched_tokens": 8}, "smaller than one KV block"),
        ({"scheduler": "vllm-v1", "max_num_batched_tokens": 64, "max_num_seqs": 128}, "smaller than --max-num-seqs"),
    ],
)
def test_bad_scheduler_options(changes, message) -> None:
    options = ReplayOptions(MODEL, resolve_gpu("h100-80gb"), **changes)
    with pytest.raises(UserError, match=message):
        validate_options(options)


@pytest.mark.parametrize(
    "gpu, expected",
    [("h100-80gb", (1024, 8192)), ("h200", (1024, 8192)), ("a100-80gb", (256, 2048)), ("l40s", (256, 2048))],
)
def test_v1_default_limits_follow_vllm_serve(gpu, expected) -> None:
    # vLLM's EngineArgs.get_batch_defaults for `vllm serve`: >= 70 GiB and not an A100 -> 1024 / 8192, else 256 / 2048
    engine = ReplayOptions(MODEL, resolve_gpu(gpu), scheduler="vllm-v1").engine_config
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == expected


def test_v0_default_limits_are_unchanged() -> None:
    engine = ReplayOptions(MODEL, resolve_gpu("h100-80gb"), scheduler="vllm-v0").engine_config
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == (256, 4096)  # llama-2-7b: max_model_len 4096


def test_user_scheduler_class_is_loaded() -> None:
    assert resolve_scheduler("sim.serving.schedulers.vllm_v1:VllmV1Scheduler") is VllmV1Scheduler
    with pytest.raises(UserError, match="lacks"):
        resolve_scheduler("sim.serving.request:Batch")


class PlainScheduler:
    """A user's scheduler written from the interface alone (no default_limits, no fast-forward): vllm-v0's decisions,
    by delegation."""

    name = "plain"
    fast_forward = False

    def __init__(self, allocator, limits, beam_model=None):
        self.inner = VllmV0Scheduler(allocator, limits, beam_model)
        self.allocator, self.limits = allocator, limits

    def __getattr__(self, name):  # waiting, num_preemptions, prefill_tokens_* ...
        return getattr(self.inner, name)

    def add(self, request):
        self.inner.add(request)

    def has_work(self):
        return self.inner.has_work()

    def next_waiting_final_len(self):
        return self.inner.next_waiting_final_len()

    def next_waiting_prefill_tokens(self):
        return self.inner.next_waiting_prefill_tokens()

    def schedule(self, now):
        return self.inner.schedule(now)

    def finish(self, batch, now):
        return self.inner.finish(batch, now)


def test_a_users_scheduler_replays_like_the_one_it_delegates_to(repo_root) -> None:
    trace = read_trace(f"{repo_root}/traces/sharegpt-2k.csv").select(slice(0, 150))
    base = dict(model=MODEL, gpu=resolve_gpu("a100-40gb"), kv_memory=2**30, fast_forward=False)
    assert ReplayOptions(**base).scheduler == "vllm-v1"  # the default
    mine = replay(trace, ReplayOptions(**base, scheduler="tests.sim.serving.test_vllm_v1:PlainScheduler"))
    v0 = replay(trace, ReplayOptions(**base, scheduler="vllm-v0"))
    assert mine.summary["config"]["scheduler"] == "plain"
    assert (mine.summary["config"]["max_num_seqs"], mine.summary["config"]["max_num_batched_tokens"]) == (256, 4096)
    for k in v0.steps:
        assert (mine.steps[k] == v0.steps[k]).all(), k
