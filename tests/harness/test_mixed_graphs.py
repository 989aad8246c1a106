"""The static-buffer path for iterations with prefill tokens (kernels.harness.mixed_graphs) against the eager path.

As in test_decode_graphs: on the CPU the static path runs eagerly in the Triton interpreter, on a CUDA machine the
same tests replay captured graphs. Each comparison executes one batch (prefills, with or without cached context, and
decodes) twice over the same pool, once padded to the runner's buckets and once through the dynamic eager path; both
must write exactly the new tokens' slots with the same K/V, and give the same attention outputs at the check rows.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.harness.calibrate import SyntheticState, _decode_batch, _prefill_batch  # noqa: E402
from kernels.harness.executor import TOLERANCE, Executor  # noqa: E402
from kernels.harness.mixed_graphs import MixedRunner, seq_buckets, token_buckets  # noqa: E402
from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.allocators.base import BlockTablePlacement  # noqa: E402
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
    t = token_buckets(4096)
    assert t[:8] == [16, 32, 48, 64, 80, 96, 112, 128]
    assert t[8:13] == [160, 192, 224, 256, 288]
    assert 512 in t and 640 in t and 2048 in t and 2304 in t and t[-1] == 4096
    assert len(t) == 8 + 12 + 12 + 8
    assert token_buckets(100) == [16, 32, 48, 64, 80, 96, 100]
    assert seq_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert seq_buckets(12) == [1, 2, 4, 8, 12]


def _run(blocks: int = 64, max_seqs: int = 12) -> GpuRun:
    opts = tiny_options(blocks, max_num_seqs=max_seqs)
    return GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, warmup=False))


def test_keys_pick_the_smallest_buckets():
    run = _run()
    r = run.mixed_runner
    assert isinstance(r, MixedRunner)
    assert r.key_for(0, 20, 1, True, 20) == (True, 0, 32, 1)
    assert r.key_for(3, 130, 3, False, 100) == (False, 4, 160, 4)
    assert r.key_for(13, 16, 1, True, 16) is None  # more decode rows than the scheduler's max
    assert r.key_for(1, 16, 1, True, 129) is None  # longer than the model's max length


def _expected_new_slots(ex: Executor, batch: Batch) -> list[int]:
    out = []
    dec = [b for s in batch.decode for b in s.branches]
    if dec:
        out += ex._decode_meta(dec)[1].ravel().tolist()
    for seq in batch.prefill:
        b = seq.branches[0]
        p = ex.alloc.placement(b)
        for pos in range(seq.cached_tokens, seq.prefill_tokens):
            out.append(
                p.block_table[pos // BLOCK] * BLOCK + pos % BLOCK
                if isinstance(p, BlockTablePlacement)
                else p.start + pos
            )
    return out


CASES = {
    "one prefill": ([(1, 21, 0)], []),
    "prefills with context": ([(1, 9, 17), (1, 30, 0), (1, 5, 40)], []),
    "prefill and decodes": ([(1, 13, 0)], [(3, 20), (1, 64)]),
}


@pytest.mark.parametrize("alloc_cls", [PagedAllocator, ContiguousOracle])
@pytest.mark.parametrize("case", sorted(CASES))
def test_static_path_matches_dynamic_path(alloc_cls, case):
    prefills, decodes = CASES[case]
    run = _run()
    state = SyntheticState(run, allocator_cls=alloc_cls)  # fills the pool with random K/V
    batch = Batch()
    for num, new, ctx in prefills:
        assert _prefill_batch(state, batch, num, new, ctx)
    for num, ctx in decodes:
        assert _decode_batch(state, batch, num, ctx)
    static = Executor(
        run.model, run.pool, state.alloc, run.source, seed=5, runner=run.decode_runner, mixed_runner=run.mixed_runner
    )
    dynamic = Executor(run.model, run.pool, state.alloc, run.source, seed=5)
    new = _expected_new_slots(dynamic, batch)
    a, b = execute_static_and_dynamic(run, static, dynamic, batch, new)
    assert a.mixed_static and not a.static
    assert not b.mixed_static

    # The same check rows (same seed), the same query and attention output there within bf16 tolerance.
    assert a.capture.decode == b.capture.decode and a.capture.prefill == b.capture.prefill
    assert len(a.capture.prefill) == 1
    atol = TOLERANCE[run.model.dtype][0]
    for layer in a.capture.layers:
        assert torch.isfinite(a.capture.out[layer]).all()
        torch.testing.assert_close(a.capture.q[layer], b.capture.q[layer], rtol=0, atol=atol)
        torch.testing.assert_close(a.capture.out[layer], b.capture.out[layer], rtol=0, atol=atol)


@pytest.mark.parametrize("allocator", ["paged", "contiguous-pow2", "paged-prefix-cache"])
def test_replay_runs_every_iteration_from_static_buffers_and_checks(tmp_path, allocator):
    """Forks with copy-on-write (the children's copies of a prompt written in the same iteration go after the
    forward), shared prefixes (prefill with cached context), decodes mixed in; every iteration checked against the
    reference; the schedule equals the simulator's."""
    rows = [(0, 13, 6, 3, 1, 8), (0, 9, 5, 2, 2, 0), (0.0, 20, 4, 1, 1, 8), (0, 17, 3, 1, 1, 8)]
    trace = _trace(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens")
    model = resolve_model(TINY)
    opts = ReplayOptions(
        model=model,
        gpu=GPUS["h100-80gb"],
        allocator=allocator,
        block_size=BLOCK,
        kv_memory=32 * BLOCK * model.kv_bytes_per_token(),
    )
    run = GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False))
    meas, pred = gpu_replay(trace, run), replay(trace, opts)
    h = meas.summary["harness"]
    with_prefill = int((meas.steps["prefill_tokens"] > 0).sum())
    decode_only = int(((meas.steps["prefill_tokens"] == 0) & (meas.steps["decode_tokens"] > 0)).sum())
    assert h["static_prefill_iterations"] == with_prefill >= 1
    assert h["static_decode_iterations"] == decode_only
    assert list(np.unique(meas.static)) == sorted({1, 2} & set(meas.static.tolist())) and 0 not in meas.static
    assert_replay_matches_simulation(meas, pred)
    if allocator == "paged-prefix-cache":
        assert meas.summary["sharing"]["prefix_cache_hit_tokens"] > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="graph capture needs CUDA")
def test_graphs_are_captured_once_per_key_and_replayed():
    run = _run()
    state = SyntheticState(run)
    ex = run.executor(state.alloc)
    for new in (5, 9, 20):
        batch = Batch()
        assert _prefill_batch(state, batch, 1, new, 0)
        assert ex.execute(batch).mixed_static
        state.release(batch)
    assert set(run.mixed_runner.graphs) == {(True, 0, 16, 1), (True, 0, 32, 1)}
    assert run.mixed_runner.replays == 3 and run.mixed_runner.eager_runs == 0
