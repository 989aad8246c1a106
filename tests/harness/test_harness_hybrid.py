"""The GPU harness on a hybrid dense model: sliding-window and full layers in KV-cache groups (vLLM's hybrid pages).

On a machine without a GPU the Triton kernels run in the interpreter, so the model is tiny (`tiny_hybrid`: 5 layers,
window 8, blocks of 4 tokens; 3 KV-cache groups over 2 pool tensors). Expected attention outputs come from the
reference built from the deterministic K/V (`Executor.check`), never from a kernel. Blocks a window gives back are
poisoned with NaN as they are given back, and the pool's null block (where block-table placeholders point) is NaN
throughout, so a kernel that read either would show NaN in the checks.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels import reference as ref  # noqa: E402
from kernels.attention import paged_decode_attention, paged_prefill_attention  # noqa: E402
from kernels.harness import executor as executor_module  # noqa: E402
from kernels.harness.calibrate import SyntheticState, _decode_batch  # noqa: E402
from kernels.harness.executor import TOLERANCE, Executor  # noqa: E402
from kernels.harness.kv_pool import KVLayers, KVPool, kv_layers  # noqa: E402
from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.allocators import REGISTRY  # noqa: E402
from sim.allocators.hybrid import NULL_BLOCK, HybridPagedAllocator, HybridPagedPrefixCache  # noqa: E402
from sim.hardware.budget import kv_budget  # noqa: E402
from sim.hardware.gpus import GPUS  # noqa: E402
from sim.hardware.kv_groups import kv_layout  # noqa: E402
from sim.hardware.models import resolve_model  # noqa: E402
from sim.serving.replay import ReplayOptions, replay  # noqa: E402
from sim.serving.request import Batch  # noqa: E402
from tests.harness._harness_testutil import (  # noqa: E402
    DEVICE,
    DTYPE,
    HYBRID_BLOCK,
    HYBRID_WINDOW,
    execute_static_and_dynamic,
    tiny_hybrid,
)
from tests.harness._harness_testutil import trace_file as _trace  # noqa: E402

W, BS = HYBRID_WINDOW, HYBRID_BLOCK


# --- the layout ---------------------------------------------------------------------------------------------------
def test_layers_of_the_synthetic_gemma_like_preset():
    """llama-3.1-8b-swa: 27 sliding layers in 6 groups and 5 full ones in 1, pages of 5 layers: 5 pool tensors;
    every layer's tensor, group and window as vLLM lays them out."""
    model = resolve_model("llama-3.1-8b-swa")
    layout = kv_layout(model)
    lm = kv_layers(model, 32, layout)
    assert lm.num_groups == 7 and lm.num_tensors == 5 and lm.null_block
    full = [i for i in range(32) if (i + 1) % 6 == 0]
    assert full == [5, 11, 17, 23, 29]
    assert [i for i, w in enumerate(lm.window) if w is None] == full
    assert all(lm.window[i] == 1024 for i in range(32) if i not in full)
    for g, group in enumerate(layout.groups):
        assert [lm.group[layer] for layer in group.layers] == [g] * group.num_layers
        assert [lm.tensor[layer] for layer in group.layers] == list(range(group.num_layers))  # layer i -> tensor i
    # the checks cover every group (and so both attention kinds), the first and the last layer
    checked = lm.check_layers()
    assert {lm.group[layer] for layer in checked} == set(range(7)) and {0, 31} <= set(checked)
    # one block table for every layer (any other allocator): a tensor per layer, windows still applied
    plain = kv_layers(model, 32, None)
    assert plain.tensor == tuple(range(32)) and plain.num_groups == 1 and not plain.null_block
    assert plain.window == lm.window
    # --layers 7: the first 7 layers, in the tensors of the whole model's layout
    assert kv_layers(model, 7, layout).tensor == lm.tensor[:7]


def test_pool_holds_the_budget_and_one_null_page():
    """The grouped pool is the simulator's budget in vLLM's pages (group size x layer pages per block), plus the null
    block; the per-layer pool of a single-table allocator is the same budget in blocks of every layer."""
    model = resolve_model("llama-3.1-8b-swa")
    layout = kv_layout(model)
    gpu, bs = GPUS["h100-80gb"], 16
    budget = kv_budget(model, gpu, bs, 3 * layout.page_bytes(bs), layout=layout)
    assert budget.num_blocks == 3
    pool = KVPool(32, 3, bs, 8, 128, torch.bfloat16, "cpu", layers=kv_layers(model, 32, layout))
    assert pool.nbytes == budget.capacity_bytes + layout.page_bytes(bs)
    assert pool.kv.shape == (5, 2, 3, bs, 8, 128) and pool.storage.shape[2] == 4
    assert pool.k(5).data_ptr() == pool.k(0).data_ptr()  # layer 5 (full group, its first layer) shares tensor 0
    plain = kv_budget(model, gpu, bs, 3 * bs * model.kv_bytes_per_token())
    pool = KVPool(32, plain.num_blocks, bs, 8, 128, torch.bfloat16, "cpu")
    assert pool.nbytes == plain.capacity_bytes and pool.null_block is None


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_placeholders_address_the_null_block(kind):
    """A placeholder (-1) in a block table addresses the null block, NaN: a window that starts past it never reads it
    (the output matches the reference), full attention over the same table reads it (NaN)."""
    layers = KVLayers((0,), (0,), (W,), 1, True)
    pool = KVPool(1, 4, BS, 2, 16, torch.float32, DEVICE, layers=layers)
    gen = torch.Generator(device="cpu").manual_seed(0)
    pool.kv.copy_(torch.randn(pool.kv.shape, generator=gen).to(DEVICE))
    assert torch.isnan(pool.storage[:, :, 0]).all()  # the null block, before block 0
    n = 4 * BS  # 16 tokens: positions 0-3 are a placeholder, the window of the last token starts at 8
    table = torch.tensor([[NULL_BLOCK, 2, 0, 3]], dtype=torch.int32, device=DEVICE)
    k = pool.k(0)[[2, 0, 3]].reshape(-1, 2, 16)  # the keys at positions 4 .. 15
    v = pool.v(0)[[2, 0, 3]].reshape(-1, 2, 16)
    q = torch.randn((1 if kind == "decode" else 4, 4, 16), generator=gen).to(DEVICE)
    qpos = torch.arange(n - q.shape[0], n, device=DEVICE)
    keys = torch.arange(BS, n, device=DEVICE)

    def attend(window):
        if kind == "decode":
            lens = torch.tensor([n], dtype=torch.int32, device=DEVICE)
            return paged_decode_attention(q, pool.k(0), pool.v(0), table, lens, 0.25, sliding_window=window)
        cu = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=DEVICE)
        ctx = torch.tensor([n - q.shape[0]], dtype=torch.int32, device=DEVICE)
        return paged_prefill_attention(q, pool.k(0), pool.v(0), table, cu, ctx, 0.25, sliding_window=window)

    mask = (keys[None, :] <= qpos[:, None]) & (keys[None, :] > qpos[:, None] - W)
    expect = ref._attend(q, k, v, 0.25, mask)
    torch.testing.assert_close(attend(W), expect, rtol=1e-5, atol=1e-5)
    assert torch.isnan(attend(None)).all()


# --- replays -------------------------------------------------------------------------------------------------------
class _Poisons:
    """Poisons (NaN) every block a window gives back and nothing else holds or indexes, as it is given back."""

    kv_pool = None
    given_back = 0
    poisoned = 0

    def _give_back(self, s, g, hi):
        gone = s.tables[g][len(s.ghosts[g]) : hi]
        super()._give_back(s, g, hi)
        dead = [b for b in gone if self.pool.ref_counts[b] == 0 and b not in self.pool.block_hash]
        _Poisons.given_back += len(gone)
        _Poisons.poisoned += len(dead)
        _Poisons.kv_pool.poison_blocks(dead)


class PoisonsHybrid(_Poisons, HybridPagedAllocator):
    name = "test-hybrid-poisons"


class PoisonsHybridCache(_Poisons, HybridPagedPrefixCache):
    name = "test-hybrid-cache-poisons"


def _options(model, allocator, blocks, **kw):
    layout = kv_layout(model)
    return ReplayOptions(
        model=model,
        gpu=GPUS["h100-80gb"],
        allocator=allocator,
        block_size=BS,
        kv_memory=blocks * BS * layout.slot_bytes(),
        **kw,
    )


def _replay(monkeypatch, trace, allocator, blocks=64, graphs=True, **kw):
    """The GPU replay (every iteration checked, given-back blocks poisoned) and the simulation of the same trace,
    and the longest context checked in a sliding-window layer."""
    cls = {"paged-hybrid": PoisonsHybrid, "paged-hybrid-prefix-cache": PoisonsHybridCache}[allocator]
    monkeypatch.setitem(REGISTRY, cls.name, cls)
    monkeypatch.setattr(_Poisons, "given_back", 0)
    monkeypatch.setattr(_Poisons, "poisoned", 0)
    model = tiny_hybrid()
    opts = _options(model, cls.name, blocks, **kw)
    run = GpuRun.build(
        opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False, cuda_graphs=graphs)
    )
    monkeypatch.setattr(_Poisons, "kv_pool", run.pool)
    longest = []
    check = Executor.check

    def recording_check(self, capture):
        if capture is not None:
            longest.append(max(n for *_, n in capture.decode + [(0, 0, c[3]) for c in capture.prefill]))
        return check(self, capture)

    monkeypatch.setattr(Executor, "check", recording_check)
    meas = gpu_replay(trace, run)
    pred = replay(trace, _options(model, allocator, blocks, **kw))
    return run, meas, pred, max(longest)


def _same_schedule_and_groups(meas, pred):
    h = meas.summary["harness"]
    assert meas.checks["within_tolerance"] and not meas.checks["nan"], meas.checks
    assert meas.checks["iterations_checked"] == h["iterations"]
    cols = ["running", "prefill_tokens", "decode_tokens", "preempted", "free_bytes", "token_states_bytes"]
    cols += [c for c in pred.steps if c.startswith("g") and c.endswith("_bytes")]  # every group's memory
    assert any(c.startswith("g2_") for c in cols)
    for col in cols:
        np.testing.assert_array_equal(meas.steps[col], pred.steps[col], err_msg=col)
    assert [g["kind"] for g in meas.summary["kv_groups"]] == ["sliding_window", "sliding_window", "full"]
    assert meas.summary["kv_groups"] == pred.summary["kv_groups"]
    assert meas.summary["requests"] == pred.summary["requests"]


# Request 0: 2 samples (a fork; copy-on-write of the prompt's partly filled last block in every group), 10 tokens of
# which 8 are a shared prefix; request 1: the same prefix (a hit of 2 blocks in every group), decoding past the
# window; request 2: a short prompt that decodes 14 tokens, far past the window of 8 (blocks given back).
ROWS = [(0, 10, 6, 2, 1, 8), (0, 12, 8, 1, 1, 8), (0, 5, 14, 1, -1, 0)]
HEADER = "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens"


@pytest.mark.parametrize(
    "allocator,graphs,kw",
    [
        ("paged-hybrid", True, {}),
        ("paged-hybrid", False, {}),
        # vllm-v1 chunks of 8 tokens: a prompt's later chunks run on context whose first blocks a window gave back
        ("paged-hybrid-prefix-cache", True, {"scheduler": "vllm-v1", "max_num_seqs": 4, "max_num_batched_tokens": 8}),
    ],
    ids=["static", "eager", "prefix-cache-chunked"],
)
def test_hybrid_replay_checks_every_layer_against_the_reference(tmp_path, monkeypatch, allocator, graphs, kw):
    rows = ROWS if not kw else [(0, 10, 6, 2, 1, 8), (0, 21, 6, 1, 1, 8), (0, 5, 14, 1, -1, 0)]
    trace = _trace(tmp_path, rows, HEADER)
    run, meas, pred, longest = _replay(monkeypatch, trace, allocator, graphs=graphs, **kw)
    assert run.pool.layers.num_groups == 3 and run.pool.null_block == NULL_BLOCK
    _same_schedule_and_groups(meas, pred)
    h = meas.summary["harness"]
    if graphs:
        assert h["static_decode_iterations"] + h["static_prefill_iterations"] == h["iterations"]
    else:
        assert h["static_decode_iterations"] == h["static_prefill_iterations"] == 0
    # the windows gave blocks back (poisoned as they went), the fork copied on write, the prefix was a hit
    assert _Poisons.given_back > 0
    if allocator == "paged-hybrid":  # (with the prefix cache, a block given back stays indexed for later hits)
        assert _Poisons.poisoned > 0
    assert meas.summary["sharing"]["cow_copies"] > 0
    assert meas.summary["sharing"]["prefix_cache_hit_tokens"] >= 8
    assert longest >= W + 2 * BS  # sequences were checked well past their window
    assert any(g["kv_memory"]["window_freed"] > 0 for g in meas.summary["kv_groups"])
    assert meas.summary["requests"]["completed"] == 3


def _dropping_window(fn):
    def call(*args, sliding_window=None, **kw):
        return fn(*args, **kw)

    return call


class SharesGroupZero(HybridPagedAllocator):
    """Broken: every group reads and writes through group 0's block table."""

    name = "test-hybrid-group-zero"

    def block_tables(self, seq_id):
        t = super().block_tables(seq_id)
        return (t[0],) * len(t)


@pytest.mark.parametrize("broken", ["ignores-window", "group-zero"])
def test_checks_catch_a_broken_hybrid_layout(tmp_path, monkeypatch, broken):
    """The checks fail when a sliding layer attends past its window (it reads placeholders: the null block, and
    blocks given back), or when every layer uses one group's table (layers sharing a tensor overwrite each other)."""
    trace = _trace(tmp_path, [(0, 5, 14, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    model = tiny_hybrid()
    allocator = "paged-hybrid"
    if broken == "ignores-window":
        for name in ("paged_decode_attention", "paged_prefill_attention"):
            monkeypatch.setattr(executor_module, name, _dropping_window(getattr(executor_module, name)))
    else:
        monkeypatch.setitem(REGISTRY, SharesGroupZero.name, SharesGroupZero)
        allocator = SharesGroupZero.name
    run = GpuRun.build(
        _options(model, allocator, 32),
        HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False, cuda_graphs=False),
    )
    meas = gpu_replay(trace, run)
    assert not meas.checks["within_tolerance"] and meas.checks["failures"]
    if broken == "ignores-window":
        assert meas.checks["nan"]  # a placeholder read the null block


# --- static buffers against the dynamic path ------------------------------------------------------------------
def _hybrid_run(graphs=True, max_seqs=8, blocks=96) -> GpuRun:
    return GpuRun.build(
        _options(tiny_hybrid(), "paged-hybrid", blocks, max_num_seqs=max_seqs),
        HarnessOptions(dtype=DTYPE, device=DEVICE, warmup=False, cuda_graphs=graphs),
    )


def _prefill_past_the_window(state: SyntheticState, batch: Batch, context: int, new: int) -> None:
    """A prompt chunk of `new` tokens on `context` earlier tokens, whose window has given blocks back."""
    seq = state.new_seq(context)
    state.alloc.append(seq.index, new)
    seq.cached_tokens = context
    batch.add_prefill(seq, context, new)


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_static_path_matches_dynamic_path_on_groups(case):
    """One batch through the static buffers (per-group slots and tables, padded) and through the dynamic path: the
    same slots written with the same K/V in every group's blocks, the same attention outputs, nothing non-finite
    (the tables hold placeholders: the sequences are longer than the window)."""
    run = _hybrid_run()
    state = SyntheticState(run)
    assert isinstance(state.alloc.wrapped, HybridPagedAllocator)
    batch = Batch()
    if case == "mixed":
        _prefill_past_the_window(state, batch, 17, 6)
    for c in (30, 13, 21):
        assert _decode_batch(state, batch, 1, c)
    tables = [state.alloc.block_tables(b) for s in batch.prefill + batch.decode for b in s.branches]
    assert any(NULL_BLOCK in t[0] for t in tables)  # placeholders in the sliding groups' tables
    static = run.executor(state.alloc, seed=5)
    dynamic = Executor(run.model, run.pool, state.alloc, run.source, seed=5)
    dec = [b for s in batch.decode for b in s.branches]
    new = dynamic._decode_meta(dec)[1].ravel().tolist()
    if batch.prefill:
        new += np.concatenate(dynamic._prefill_meta(batch.prefill, batch.prefill_spans)[3], axis=1).ravel().tolist()
    a, b = execute_static_and_dynamic(run, static, dynamic, batch, new)
    assert (a.static, a.mixed_static) == ((True, False) if case == "decode" else (False, True))
    assert not b.static and not b.mixed_static
    atol = TOLERANCE[run.model.dtype][0]
    assert set(a.capture.layers) == {0, 1, 2, 4}  # every group (and so both attention kinds), first and last layer
    for layer in a.capture.layers:
        assert torch.isfinite(a.capture.out[layer]).all()
        torch.testing.assert_close(a.capture.q[layer], b.capture.q[layer], rtol=0, atol=atol)
        torch.testing.assert_close(a.capture.out[layer], b.capture.out[layer], rtol=0, atol=atol)


def test_a_pool_laid_out_for_other_groups_is_refused_and_rebuilt(tmp_path):
    """An executor refuses an allocator whose groups are not the pool's; GpuRun.use_options lays the pool out again
    for another allocator (cmd_validate's second allocator), and a replay then runs on it."""
    run = _hybrid_run(graphs=False, blocks=32)
    state = SyntheticState(run)
    from kernels.harness.kv_source import LineageTracker
    from sim.allocators.paged import PagedAllocator

    with pytest.raises(ValueError, match="3 KV-cache group"):
        Executor(run.model, run.pool, LineageTracker(PagedAllocator(8, BS, 64)), run.source)
    assert run.use_options(run.options) is False  # same budget: the same pool
    assert state.executor.pool is run.pool
    model = tiny_hybrid()
    paged = ReplayOptions(
        model=model, gpu=GPUS["h100-80gb"], allocator="paged", block_size=BS, kv_memory=run.options.kv_memory
    )
    assert run.use_options(paged) is True
    assert run.pool.layers.num_groups == 1 and run.pool.null_block is None and run.pool.kv.shape[0] == 5
    trace = _trace(tmp_path, [(0, 5, 12, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    run.harness.check_every = 1
    meas = gpu_replay(trace, run)  # sliding layers keep their window on a single-table allocator
    assert meas.checks["within_tolerance"] and not meas.checks["nan"], meas.checks
    assert "kv_groups" not in meas.summary
    run.options = _options(model, "paged-hybrid", 32)  # as cmd_validate sets it: gpu_replay lays the pool out again
    meas = gpu_replay(trace, run)
    assert run.pool.layers.num_groups == 3 and meas.checks["within_tolerance"] and len(meas.summary["kv_groups"]) == 3
