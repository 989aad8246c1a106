"""The balanced (stream-K) decode path, ``config={"balanced": True}``, against the torch reference.

Its partial buffers are NaN-poisoned in these tests (``torch.empty`` is wrapped), so a slot the reduce reads but no
program wrote shows up as NaN, as does an output row nobody wrote.
"""

import random

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from _kernel_testutil import (
    CUDA,
    DEVICE,
    DTYPES,
    assert_close,
    boundary_lengths,
    dtype_id,  # noqa: E402
    make_contiguous,
    make_paged,
    poisoned_like,
)

from kernels import reference as ref  # noqa: E402
from kernels.attention import decode, decode_plan  # noqa: E402
from kernels.attention import decode_balanced as db  # noqa: E402


@pytest.fixture
def poisoned_empty(monkeypatch):
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)


def _run(lens, group, num_kv_heads, head_size, block_size, dtype, config, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, v, bt = make_paged(lens, num_kv_heads, head_size, block_size, dtype, gen=gen)
    q = torch.randn((len(lens), num_kv_heads * group, head_size), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    scale = head_size**-0.5
    out = poisoned_like(q)
    res = decode.paged_decode_attention(q, k, v, bt, sl, scale, out=out, config=dict(balanced=True, **config))
    assert res is out
    assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, scale), dtype, f"balanced lens={lens} {config}")


# --------------------------------------------------------------------------------------
# the work list, by hand
# --------------------------------------------------------------------------------------


@triton.jit
def _locate_probe(
    lens_ptr, xs_ptr, out_ptr, num_seqs, num_kv_heads, n_x, BLOCK_N: tl.constexpr, NSEQ_PAD: tl.constexpr
):
    offs, tiles, ends = db._tile_layout(lens_ptr, num_seqs, BLOCK_N, NSEQ_PAD)
    tl.store(out_ptr, tl.sum(tiles.to(tl.int64), axis=0) * num_kv_heads)
    for i in range(0, n_x):
        seq, head, tile = db._locate(tl.load(xs_ptr + i), offs, tiles, ends, num_kv_heads)
        tl.store(out_ptr + 1 + 3 * i, seq.to(tl.int64))
        tl.store(out_ptr + 2 + 3 * i, head.to(tl.int64))
        tl.store(out_ptr + 3 + 3 * i, tile)


def test_locate_by_hand():
    # lengths 64, 32, 0, 96 in 32-token tiles: 2, 1, 0 and 3 tiles; with 2 KV heads the work items are
    # s0h0: 0-1, s0h1: 2-3, s1h0: 4, s1h1: 5, (s2 none), s3h0: 6-8, s3h1: 9-11 -> 12 items
    lens = torch.tensor([64, 32, 0, 96], dtype=torch.int32, device=DEVICE)
    xs = [0, 1, 3, 4, 5, 6, 8, 11]
    expect = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 1, 0), (3, 0, 0), (3, 0, 2), (3, 1, 2)]
    out = torch.full((1 + 3 * len(xs),), -1, dtype=torch.int64, device=DEVICE)
    _locate_probe[(1,)](
        lens, torch.tensor(xs, dtype=torch.int64, device=DEVICE), out, 4, 2, len(xs), BLOCK_N=32, NSEQ_PAD=4
    )
    got = out.tolist()
    assert got[0] == 12
    assert [tuple(got[1 + 3 * i : 4 + 3 * i]) for i in range(len(xs))] == expect


def test_resident_programs_by_hand():
    # H100 limits: 65,536 registers, 2,048 threads and 228 KB of shared memory per SM
    assert db.resident_programs(128, 39 * 1024, 4) == 4  # 4 warps x 4,096 registers: 4 programs
    assert db.resident_programs(138, 39 * 1024, 4) == 3  # 138 -> 144 per thread, 4,608 per warp: 14 warps
    assert db.resident_programs(153, 113 * 1024, 4) == 2  # shared memory: 233,472 // (115,712 + 1,024)
    assert db.resident_programs(32, 0, 4) == 16  # threads: 2,048 // 128
    assert db.resident_programs(255, 0, 8) == 1


# --------------------------------------------------------------------------------------
# against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("programs", [1, 3, 7, 64], ids=lambda p: f"prog{p}")
@pytest.mark.parametrize("group", [1, 4, 8])
def test_balanced_matches_reference(poisoned_empty, group, programs, dtype):
    # 64 programs is more than the 26-46 tiles: some programs get no work and leave neutral partials
    lens = [0, 1, 31, 32, 33, 200, 95, 0, 64]
    _run(lens, group, 2, 64, 16, dtype, dict(programs=programs), seed=group + programs)


@pytest.mark.parametrize("head_size,block_size", [(80, 8), (96, 32), (128, 24), (256, 16)])
def test_balanced_head_and_block_sizes(poisoned_empty, head_size, block_size):
    _run(boundary_lengths(block_size), 4, 2, head_size, block_size, DTYPES[0], dict(programs=5))


def test_balanced_default_grid(poisoned_empty):
    # no ``programs``: resident slots x SMs, cut to one program per 4 tiles of the table's width
    _run([300, 17, 0, 129], 4, 2, 64, 16, DTYPES[0], {})


def test_balanced_all_empty(poisoned_empty):
    _run([0, 0, 0], 4, 2, 64, 16, DTYPES[0], dict(programs=4))


def test_balanced_contiguous(poisoned_empty):
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(11)
    num_kv_heads, group, head_size = 2, 4, 80
    lens, gaps = [1, 15, 0, 17, 120, 333], [3, 0, 2, 5, 1, 0]
    pool_k, pool_v, st = make_contiguous(lens, gaps, num_kv_heads, head_size, dtype, gen)
    q = torch.randn((len(lens), num_kv_heads * group, head_size), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = poisoned_like(q)
    decode.contiguous_decode_attention(
        q, pool_k, pool_v, st, sl, 0.1, out=out, max_seq_len=max(lens), config=dict(balanced=True, programs=6)
    )
    assert_close(out, ref.ref_contiguous_decode(q, pool_k, pool_v, st, sl, 0.1), dtype)


def test_balanced_long_context_gpu_sized_grid(poisoned_empty):
    # the grid a GPU would get for a small batch: 2 resident x 132 SMs = 264 programs over 4 x 2 x 24 tiles
    lens = [768, 700, 1, 767]
    gen = random.Random(5)
    lens = [n if i % 2 == 0 else gen.randint(1, 768) for i, n in enumerate(lens)]
    _run(lens, 2, 2, 64, 16, DTYPES[0], dict(programs=264))


def test_balanced_default_rule():
    # taken by default only when the min_seq_len hint marks the batch as mixed (below 0.9 of the bound), with 16 to
    # 1,024 / KV heads sequences, automatic splits and one KV head per program
    assert decode_plan.balanced_default(16, 8, 8192, 1, None)
    assert decode_plan.balanced_default(16, 8, 8192, 7372, None)  # 7,372 < 0.9 x 8,192 = 7,372.8
    assert not decode_plan.balanced_default(16, 8, 8192, 7373, None)  # near-uniform
    assert not decode_plan.balanced_default(16, 8, 8192, None, None)  # no hint: the host cannot tell
    assert not decode_plan.balanced_default(15, 8, 8192, 1, None)
    assert decode_plan.balanced_default(128, 8, 8192, 1, None)  # 1,024 pairs
    assert not decode_plan.balanced_default(129, 8, 8192, 1, None)
    assert not decode_plan.balanced_default(16, 8, 8192, 1, 4)  # forced split count
    assert not decode_plan.balanced_default(16, 8, 8192, 1, None, heads_per_program=2)


def test_mixed_hint_takes_balanced_path(monkeypatch, poisoned_empty):
    calls = []
    real = db.balanced_decode_launch

    def spy(*args, **kwargs):
        calls.append(kwargs["cfg"].get("balanced"))
        return real(*args, **kwargs)

    monkeypatch.setattr(db, "balanced_decode_launch", spy)
    dtype = DTYPES[0]
    lens = [random.Random(3).randint(0, 90) for _ in range(16)]
    gen = torch.Generator().manual_seed(4)
    k, v, bt = make_paged(lens, 1, 64, 16, dtype, gen=gen, table_width=6)  # bound 96 tokens
    q = torch.randn((16, 4, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_paged_decode(q, k, v, bt, sl, 0.125)
    for kwargs, balanced in (
        (dict(min_seq_len=min(lens)), True),
        (dict(min_seq_len=90), False),
        ({}, False),
        (dict(min_seq_len=min(lens), fused_reduce=False), False),
        (dict(config={"balanced": True}), True),
    ):
        calls.clear()
        out = decode.paged_decode_attention(q, k, v, bt, sl, 0.125, out=poisoned_like(q), **kwargs)
        assert bool(calls) == balanced, kwargs
        assert_close(out, expect, dtype, str(kwargs))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=10, deadline=None)
    @given(
        lens=st.lists(st.integers(min_value=0, max_value=260), min_size=1, max_size=5),
        num_kv_heads=st.sampled_from([1, 2, 3]),
        group=st.sampled_from([1, 2, 4]),
        block_size=st.sampled_from([8, 16, 32]),
        programs=st.integers(min_value=1, max_value=40),
        seed=st.integers(0, 2**16),
    )
    def test_balanced_hypothesis(lens, num_kv_heads, group, block_size, programs, seed):
        _run(lens, group, num_kv_heads, 64, block_size, DTYPES[0], dict(programs=programs), seed=seed)
except ImportError:  # pragma: no cover
    pass


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA graphs")
def test_balanced_in_cuda_graph():
    # the work list is built on the device: a captured launch replayed with new lengths (same table width)
    dtype = DTYPES[-1]
    lens_a, lens_b = [500, 3, 260, 0, 511], [17, 511, 0, 300, 256]
    gen = torch.Generator().manual_seed(2)
    k, v, bt = make_paged([512] * 5, 2, 128, 16, dtype, gen=gen)
    q = torch.randn((5, 8, 128), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens_a, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)
    cfg = dict(balanced=True)
    decode.paged_decode_attention(q, k, v, bt, sl, 0.1, out=out, config=cfg)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        decode.paged_decode_attention(q, k, v, bt, sl, 0.1, out=out, config=cfg)
    for lens in (lens_a, lens_b):
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.1), dtype, f"graph lens {lens}")
