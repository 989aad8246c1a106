"""The GPU harness on a tiny model, with the Triton kernels in the interpreter when there is no GPU.

Every test replays a small trace through the real scheduler and allocator, executes each iteration on the kernels over
a real KV pool in check mode, and compares attention outputs with the reference recomputed from the deterministic
K/V. All requests arrive at t = 0, so the sequence of batches does not depend on timing and the harness's records
must equal the simulator's (iteration by iteration), except for times.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.allocators import REGISTRY  # noqa: E402
from sim.allocators.base import BlockTablePlacement  # noqa: E402
from sim.allocators.paged import PagedAllocator  # noqa: E402
from sim.hardware.gpus import GPUS  # noqa: E402
from sim.hardware.models import resolve_model  # noqa: E402
from sim.serving.replay import ReplayOptions, replay  # noqa: E402
from tests.harness._harness_testutil import BLOCK, DEVICE, DTYPE, TINY  # noqa: E402
from tests.harness._harness_testutil import trace_file as _trace


def _run(trace, allocator, blocks=24, graphs=True, **kw):
    model = resolve_model(TINY)
    opts = ReplayOptions(
        model=model,
        gpu=GPUS["h100-80gb"],
        allocator=allocator,
        block_size=BLOCK,
        kv_memory=blocks * BLOCK * model.kv_bytes_per_token(),
        **kw,
    )
    run = GpuRun.build(
        opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False, cuda_graphs=graphs)
    )
    return run, gpu_replay(trace, run), replay(trace, opts)


def _same_schedule(meas, pred):
    for col in (
        "running",
        "waiting",
        "prefill_tokens",
        "decode_tokens",
        "preempted",
        "token_states_bytes",
        "reserved_bytes",
        "internal_fragmentation_bytes",
        "external_fragmentation_bytes",
        "free_bytes",
        "unshared_bytes",
    ):
        np.testing.assert_array_equal(meas.steps[col], pred.steps[col], err_msg=col)
    assert meas.summary["requests"] == pred.summary["requests"]
    assert meas.summary["batch_size"] == pred.summary["batch_size"]


def test_paged_parallel_sampling_copy_on_write(tmp_path):
    trace = _trace(tmp_path, [(0, 13, 4, 3), (0, 9, 3, 2), (0, 20, 2, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    run, meas, pred = _run(trace, "paged")
    assert meas.summary["sharing"]["cow_copies"] > 0  # copy-on-write really ran on the pool
    assert meas.checks["within_tolerance"], meas.checks
    assert meas.checks["rows_checked"] > 10 and not meas.checks["nan"]
    _same_schedule(meas, pred)
    assert meas.summary["requests"]["completed"] == 3


def test_paged_beam_search_forks_after_decode(tmp_path):
    trace = _trace(tmp_path, [(0, 10, 5, 3)], "arrival_s,prompt_tokens,output_tokens,beam_width")
    run, meas, pred = _run(trace, "paged", beam_replace_prob=0.5, seed=3)
    assert meas.checks["within_tolerance"], meas.checks
    _same_schedule(meas, pred)


def test_contiguous_with_forks_and_preemption_free_schedule(tmp_path):
    trace = _trace(tmp_path, [(0, 12, 3, 2), (0, 7, 4, 1), (0, 5, 2, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    run, meas, pred = _run(trace, "contiguous-pow2", blocks=16)
    assert meas.checks["within_tolerance"], meas.checks
    assert meas.checks["rows_checked"] > 5
    _same_schedule(meas, pred)


def test_prefix_sharing_reads_the_other_requests_blocks(tmp_path):
    rows = [(0, 20, 2, 5, 16), (0, 22, 2, 5, 16)]
    trace = _trace(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens")
    run, meas, pred = _run(trace, "paged")
    assert meas.summary["sharing"]["prefix_cache_hit_tokens"] >= 16  # the second request skipped two blocks
    assert meas.checks["within_tolerance"], meas.checks
    _same_schedule(meas, pred)


class DropsCopies(PagedAllocator):
    """Broken: forgets to report copy-on-write copies (the private copy is never filled)."""

    name = "test-drops-copies"

    def take_copy_ops(self):
        super().take_copy_ops()
        return []


class SharesBlockZero(PagedAllocator):
    """Broken: every sequence's first block is placed in physical block 0 (sequences overwrite each other)."""

    name = "test-shares-block-zero"

    def placement(self, seq_id):
        p = super().placement(seq_id)
        return BlockTablePlacement(p.block_size, (0,) + p.block_table[1:])


@pytest.mark.parametrize("graphs", [True, False], ids=["static-decode", "eager"])
@pytest.mark.parametrize("broken", [DropsCopies, SharesBlockZero])
def test_checks_catch_broken_placements(tmp_path, monkeypatch, broken, graphs):
    monkeypatch.setitem(REGISTRY, broken.name, broken)
    trace = _trace(tmp_path, [(0, 12, 3, 3), (0, 11, 3, 1)], "arrival_s,prompt_tokens,output_tokens,n")
    run, meas, pred = _run(trace, broken.name, graphs=graphs)
    assert (
        meas.summary["harness"]["static_decode_iterations"] > 0
        if graphs
        else meas.summary["harness"]["static_decode_iterations"] == 0
    )
    assert not meas.checks["within_tolerance"]
    assert meas.checks["failures"]


@pytest.mark.parametrize("allocator", ["paged", "paged-prefix-cache", "contiguous-pow2"])
def test_vllm_v1_prompt_chunks_run_on_their_context(tmp_path, allocator):
    # A 16-token budget: the 40- and 30-token prompts are computed in chunks on the context of their earlier chunks,
    # in the same iterations as decode rows; both share a 24-token prefix (hits, and prefix blocks written by a later
    # chunk) and the second forks its 2 samples when its last chunk runs.
    rows = [(0, 40, 3, 1, 5, 24), (0, 30, 4, 2, 5, 24), (0, 9, 5, 1, -1, 0)]
    trace = _trace(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens")
    run, meas, pred = _run(trace, allocator, blocks=40, scheduler="vllm-v1", max_num_seqs=4, max_num_batched_tokens=16)
    assert meas.checks["within_tolerance"] and not meas.checks["nan"], meas.checks
    _same_schedule(meas, pred)
    prefill, decode = pred.steps["prefill_tokens"], pred.steps["decode_tokens"]
    assert prefill.max() <= 16 and ((prefill > 0) & (decode > 0)).any()
    # 79 prompt tokens; the paged allocators find the second request's whole 24-token prefix (3 blocks of 8, the
    # third written by the first request's second chunk), contiguous allocators share nothing
    hits = 24 if allocator.startswith("paged") else 0
    assert meas.summary["sharing"]["prefix_cache_hit_tokens"] == hits
    assert prefill.sum() == 79 - hits
    assert meas.summary["requests"]["completed"] == 3
