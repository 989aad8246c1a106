"""The static-buffer decode path (kernels.harness.decode_graphs) against the dynamic eager path.

On the CPU the static path runs eagerly in the Triton interpreter (the capture itself needs CUDA); on a CUDA machine
the same tests replay captured graphs. Each comparison executes one decode batch twice over the same pool: through the
runner (padded to a batch bucket, fixed-width block tables, a context bucket as the split-KV bound) and through the
executor's dynamic path (tables as wide as the batch needs, the exact longest context as the bound). Both must write
the same slots with the same K/V and give the same attention outputs, and padded rows must write nothing.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.harness.calibrate import SyntheticState, synthetic_batches  # noqa: E402
from kernels.harness.decode_graphs import DecodeRunner, batch_buckets, context_buckets  # noqa: E402
from kernels.harness.executor import TOLERANCE, Executor  # noqa: E402
from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.allocators.contiguous import ContiguousOracle  # noqa: E402
from sim.allocators.paged import PagedAllocator  # noqa: E402
from sim.hardware.gpus import GPUS  # noqa: E402
from sim.hardware.models import resolve_model  # noqa: E402
from sim.serving.replay import ReplayOptions, replay  # noqa: E402
from sim.serving.request import Batch  # noqa: E402
from tests.harness._harness_testutil import (
    BLOCK,
    DEVICE,
    DTYPE,
    TINY,
    assert_replay_matches_simulation,  # noqa: E402
    execute_static_and_dynamic,
    tiny_options,
)
from tests.harness._harness_testutil import (
    trace_file as _trace,
)


def test_buckets():
    assert batch_buckets(256)[:6] == [1, 2, 4, 8, 16, 24]
    assert batch_buckets(256)[-2:] == [248, 256] and len(batch_buckets(256)) == 4 + 31
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert context_buckets(4096) == [256, 512, 1024, 2048, 4096]
    assert context_buckets(3000) == [256, 512, 1024, 2048, 3000]
    assert context_buckets(128) == [128]
    assert context_buckets(128, smallest=16) == [16, 32, 64, 128]


def _run(blocks: int = 48, graphs: bool = True, check: bool = True) -> GpuRun:
    opts = tiny_options(blocks, max_num_seqs=12)
    return GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check=check, warmup=False, cuda_graphs=graphs))


def _runner(run: GpuRun, min_ctx: int = 16) -> DecodeRunner:
    """Small context buckets (16, 32, 64, 128), so one tiny batch spans several of them."""
    return DecodeRunner(
        run.model,
        run.pool,
        run.source,
        [0, run.model.shapes.layers - 1],
        12,
        run.options.model.max_model_len,
        use_graphs=DEVICE == "cuda",
        min_ctx_bucket=min_ctx,
    )


def _decode_batch(state: SyntheticState, contexts: list[int]) -> Batch:
    batch = Batch()
    for c in contexts:
        b = next(synthetic_batches(state, "decode", 1, c))
        batch.decode += b.decode
        batch.num_decode_seqs += 1
        batch.decode_context_tokens += c
    return batch


def _new_slots(state: SyntheticState, batch: Batch) -> list[int]:
    out = []
    for seq in batch.decode:
        b = seq.branches[0]
        n, p = state.alloc.num_tokens(b), state.alloc.placement(b)
        if hasattr(p, "block_table"):
            out.append(p.block_table[(n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK)
        else:
            out.append(p.start + n - 1)
    return out


@pytest.mark.parametrize("alloc_cls", [PagedAllocator, ContiguousOracle])
@pytest.mark.parametrize("contexts", [[5], [40, 9, 70], [3, 17, 33, 64, 100]])
def test_static_path_matches_dynamic_path(alloc_cls, contexts):
    run = _run()
    runner = _runner(run)
    state = SyntheticState(run, allocator_cls=alloc_cls)  # fills the pool with random K/V
    batch = _decode_batch(state, contexts)
    new = _new_slots(state, batch)
    static = Executor(run.model, run.pool, state.alloc, run.source, seed=5, runner=runner)
    dynamic = Executor(run.model, run.pool, state.alloc, run.source, seed=5, runner=None)

    a, b = execute_static_and_dynamic(run, static, dynamic, batch, new)
    assert a.static
    assert not b.static

    # Same attention rows (the capture picks the same rows with the same seed), within bf16 tolerance of each other,
    # and both within tolerance of the reference built from the deterministic K/V.
    assert a.capture.decode == b.capture.decode and len(a.capture.decode) == min(3, len(contexts))
    # (Matrix products over a padded batch may round differently, hence a tolerance.) The pool before the new
    # tokens holds random K/V (SyntheticState), not the deterministic table, so the reference comparison is left to
    # the replay tests below.
    atol = TOLERANCE[run.model.dtype][0]
    for layer in a.capture.layers:
        assert torch.isfinite(a.capture.out[layer]).all()
        torch.testing.assert_close(a.capture.q[layer], b.capture.q[layer], rtol=0, atol=atol)
        torch.testing.assert_close(a.capture.out[layer], b.capture.out[layer], rtol=0, atol=atol)


def test_keys_pick_the_smallest_buckets():
    run = _run()
    runner = _runner(run)
    assert runner.key_for(1, 1, True) == (True, 1, 16)
    assert runner.key_for(3, 17, True) == (True, 4, 32)
    assert runner.key_for(9, 128, False) == (False, 12, 128)  # max_num_seqs 12 is the last batch bucket
    assert runner.key_for(13, 10, True) is None  # more rows than any bucket: the executor runs it eagerly
    assert runner.key_for(2, 129, True) is None  # longer than the model's max length


@pytest.mark.parametrize("allocator", ["paged", "contiguous-pow2"])
def test_replay_through_the_static_path_checks_and_schedules_like_the_simulator(tmp_path, allocator):
    """Parallel sampling (forks, copy-on-write before the graph's cache writes), every iteration checked."""
    trace = _trace(tmp_path, [(0, 13, 6, 3), (0, 9, 5, 2), (0, 20, 4, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    model = resolve_model(TINY)
    opts = ReplayOptions(
        model=model,
        gpu=GPUS["h100-80gb"],
        allocator=allocator,
        block_size=BLOCK,
        kv_memory=24 * BLOCK * model.kv_bytes_per_token(),
    )
    run = GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False))
    run.decode_runner = _runner(run)
    meas, pred = gpu_replay(trace, run), replay(trace, opts)
    h = meas.summary["harness"]
    decode_only = int(((meas.steps["prefill_tokens"] == 0) & (meas.steps["decode_tokens"] > 0)).sum())
    assert h["static_decode_iterations"] == decode_only > 3
    assert_replay_matches_simulation(meas, pred)
    if allocator == "paged":
        assert meas.summary["sharing"]["cow_copies"] > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="graph capture needs CUDA")
def test_graphs_are_captured_once_per_key_and_replayed():
    run = _run()
    runner = _runner(run)
    state = SyntheticState(run)
    ex = Executor(run.model, run.pool, state.alloc, run.source, runner=runner)
    for contexts in ([5, 6], [7, 8], [40, 2, 3]):
        batch = _decode_batch(state, contexts)
        r = ex.execute(batch)
        assert r.static
        state.release(batch)
    assert set(runner.graphs) == {(True, 2, 16), (True, 4, 64)}
    assert runner.replays == 3 and runner.eager_runs == 0


@pytest.mark.parametrize("paged", [True, False], ids=["paged", "contiguous"])
def test_static_decode_attention_splits_a_loose_bound_into_512_token_partitions(paged):
    """Static iterations launch the decode kernel with a loose bound (the model's max length) cut into 512-token
    partitions; spread lengths, a zero-length padded row and a bound of 1,100 (3 partitions, the last partial) must
    still give the reference's output."""
    from kernels import reference as ref
    from kernels.harness.decode_graphs import STATIC_DECODE_PARTITION, static_decode_attention
    from kernels.harness.kv_pool import KVPool

    assert STATIC_DECODE_PARTITION == 512
    gen = torch.Generator().manual_seed(5)
    lens = [1, 511, 513, 1100, 0]
    pool = KVPool(1, 160, 16, 2, 64, torch.float32, DEVICE)
    pool.kv.copy_(torch.randn(pool.kv.shape, generator=gen))
    q = torch.randn((len(lens), 4, 64), generator=gen).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    perm = torch.randperm(160, generator=gen)
    bt = torch.zeros((len(lens), 70), dtype=torch.int32)
    starts = torch.zeros(len(lens), dtype=torch.int64)
    used = slot = 0
    for s, n in enumerate(lens):
        need = -(-n // 16)
        bt[s, :need] = perm[used : used + need].to(torch.int32)
        used += need
        starts[s] = slot
        slot += n
    bt, starts = bt.to(DEVICE), starts.to(DEVICE)
    out = torch.full_like(q, float("nan"))
    static_decode_attention(q, pool, 0, paged, bt, starts, sl, 0.125, 1100, out)
    if paged:
        expect = ref.ref_paged_decode(q, pool.k(0), pool.v(0), bt, sl, 0.125)
    else:
        expect = ref.ref_contiguous_decode(q, pool.k_slots(0), pool.v_slots(0), starts, sl, 0.125)
    torch.testing.assert_close(out, expect, atol=2e-5, rtol=2e-5)
    assert torch.all(out[-1] == 0)
