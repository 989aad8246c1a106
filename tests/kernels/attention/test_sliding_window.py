"""Sliding-window attention (``sliding_window=W``) in the paged decode (split-KV and balanced), contiguous decode and
paged prefill kernels, against the torch reference.

A query at position ``p`` sees keys ``p - W < k <= p``. Block-table entries of blocks wholly before the window are
replaced by placeholders, as a sliding-window cache returns those blocks to the pool: half point at a NaN block,
half are out of range (2**31 - 7), and the blocks themselves are filled with NaN. On the CPU interpreter every load
is also recorded (``kernels.bench.loads``) to show that no such table entry is read at all, and for decode that
exactly the window's K/V bytes are read.
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import CUDA, DEVICE, DTYPES, assert_close, dtype_id, make_contiguous, make_paged  # noqa: E402

from kernels import reference as ref  # noqa: E402
from kernels.attention import decode, decode_plan, dispatch  # noqa: E402
from kernels.attention.common import interpreting  # noqa: E402

OUT_OF_RANGE = 2**31 - 7
FP16 = DTYPES[0]


def _window_cases(block_size):
    """Windows smaller than a block, equal to one, not a multiple of the block size, and longer than any context."""
    return [3, block_size, 2 * block_size + 5, 10_000]


def _nan_out(q):
    return torch.full_like(q, float("nan"))


def _free_blocks_before(k, v, bt, seq_lens, first_pos):
    """Return the blocks of sequence ``s`` wholly before position ``first_pos[s]`` to the "pool": fill them with NaN
    and replace their table entries by placeholders (a NaN block, or an out-of-range id). Returns the first live
    block index of each sequence."""
    bs = k.shape[1]
    used = set()
    for s, n in enumerate(seq_lens):
        used.update(int(b) for b in bt[s, : math.ceil(n / bs)].tolist())
    nan_block = min(set(range(k.shape[0])) - used)  # make_paged's extra blocks are NaN
    first_live = []
    for s, p in enumerate(first_pos):
        j0 = max(0, p) // bs
        for j in range(j0):
            blk = int(bt[s, j])
            k[blk] = float("nan")
            v[blk] = float("nan")
        for j in range(j0):
            bt[s, j] = nan_block if j % 2 == 0 else OUT_OF_RANGE
        first_live.append(j0)
    return first_live


def _checked(fn, bt, first_live, seq_lens, k=None, kv_tokens=None):
    """Run ``fn``; under the interpreter also check that the table entries it read are all live blocks of the
    sequence (and, given ``k`` and ``kv_tokens``, that it read exactly ``kv_tokens`` distinct K rows)."""
    if not interpreting():
        return fn()
    from kernels.bench.loads import bytes_read, elements_read, record_loads

    with record_loads() as loads:
        res = fn()
    bs = k.shape[1] if k is not None else None
    for idx in set(elements_read(loads, bt).tolist()):
        s, j = divmod(idx, bt.stride(0))
        assert first_live[s] <= j, (
            f"sequence {s}: block-table entry {j} read, before the window (block {first_live[s]})"
        )
        if bs is not None:
            assert j < math.ceil(seq_lens[s] / bs), f"sequence {s}: block-table entry {j} read past the end"
    if kv_tokens is not None:
        row = k.shape[2] * k.shape[3] * k.element_size()
        _, distinct = bytes_read(loads, k)
        assert distinct == kv_tokens * row, f"read {distinct / row} K rows, the windows hold {kv_tokens}"
    return res


# --------------------------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------------------------


def _decode_inputs(lens, num_q_heads, num_kv_heads, head, bs, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    k, v, bt = make_paged(lens, num_kv_heads, head, bs, dtype, gen=gen, extra_blocks=2)
    q = torch.randn((len(lens), num_q_heads, head), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    return k, v, bt, q, sl, head**-0.5


def _run_decode_window(lens, window, bs, dtype=FP16, group=4, num_kv_heads=2, head=64, seed=0, calls=None):
    """Every call of ``calls`` (keyword arguments of ``paged_decode_attention``) with the window, on a cache whose
    out-of-window blocks are freed, against the reference."""
    k, v, bt, q, sl, scale = _decode_inputs(lens, group * num_kv_heads, num_kv_heads, head, bs, dtype, seed)
    expect = ref.ref_paged_decode(q, k, v, bt, sl, scale, sliding_window=window)
    first_live = _free_blocks_before(k, v, bt, lens, [n - window for n in lens])
    tokens = sum(min(n, window) for n in lens)
    for kw in calls or [dict(num_splits=1), dict(num_splits=3), {}]:
        out = _nan_out(q)

        def call(kw=kw, out=out):
            return decode.paged_decode_attention(q, k, v, bt, sl, scale, out=out, sliding_window=window, **kw)

        _checked(call, bt, first_live, lens, k, tokens)
        assert_close(out, expect, dtype, f"decode W={window} lens={lens} {kw}")
    return expect


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("which", range(4), ids=["below_block", "block", "odd", "beyond_context"])
def test_decode_window(block_size, which):
    window = _window_cases(block_size)[which]
    lens = [1, 2, block_size - 1, block_size, block_size + 1, 3 * block_size + 5, 70]
    _run_decode_window(lens, window, block_size, seed=block_size + which)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_decode_window_dtypes_and_mha(dtype):
    _run_decode_window([0, 5, 40, 97], 21, 16, dtype=dtype, group=1, head=80, seed=3)


def test_decode_window_balanced():
    """The stream-K kernel: its work list holds the windows' tiles only, with 1, a few and more programs than
    tiles, and lengths of 0 and below the window."""
    calls = [dict(config={"balanced": True, "programs": p}) for p in (1, 5, 40)]
    _run_decode_window([0, 7, 90, 13, 64, 33], 19, 8, calls=calls, seed=4)


def test_decode_window_configs():
    """Register prefetch (its early block-table load is skipped with a window), several KV heads per program, the
    CUDA-core path and both split-KV reduces."""
    calls = [
        dict(config={"prefetch": True, "num_stages": 1}, num_splits=2),
        dict(config={"prefetch": True, "early_bt": True}, num_splits=1),
        dict(config={"heads_per_program": 2}, num_splits=3),
        dict(config={"use_dot": False}, num_splits=2),
        dict(num_splits=4, fused_reduce=True),
        dict(num_splits=4, fused_reduce=False),
    ]
    _run_decode_window([3, 50, 77, 16], 24, 16, calls=calls, seed=5)


def test_decode_window_device_uniform_partition(monkeypatch):
    """The device-side uniform-length test sees the window's key counts: lengths that differ but all exceed the
    window are uniform there. Shrunk heuristics make a tiny batch take that path."""
    monkeypatch.setattr(decode_plan, "MAX_PARTITION", 32)
    monkeypatch.setattr(decode_plan, "MIN_PARTITION", 16)
    monkeypatch.setattr(decode_plan, "RESIDENT_PROGRAMS_PER_SM", 0.05)
    window = 70
    plan = decode_plan.split_plan(4, 2, window, 32, 132, None, None)
    assert plan[2], "the test needs the device-side uniform test"
    for lens in ([200, 210, 190, 75], [200, 30, 75, 71]):
        _run_decode_window(lens, window, 16, calls=[{}], seed=6)


def test_partition_on_device_counts_window_keys():
    """The device-side uniform test itself: lengths that all exceed the window are uniform under it."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(lens_ptr, out_ptr, n, window, NSEQ_PAD: tl.constexpr, SLIDING: tl.constexpr):
        tl.store(out_ptr, decode._partition_on_device(lens_ptr, n, 32, 96, 0.9, NSEQ_PAD, window, SLIDING))

    lens = torch.tensor([200, 210, 190, 75], dtype=torch.int32, device=DEVICE)
    got = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    for window, sliding, expect in ((70, True, 96), (70, False, 32), (90, True, 32)):
        probe[(1,)](lens, got, 4, window, NSEQ_PAD=4, SLIDING=sliding)
        assert int(got) == expect, (window, sliding)


def test_decode_window_beyond_context_is_full_attention():
    """A window no shorter than ``max_seq_len`` is full attention, bit for bit; a window longer than some sequences
    (but not all) leaves those sequences' outputs as with full attention."""
    lens = [5, 33, 64]
    k, v, bt, q, sl, scale = _decode_inputs(lens, 8, 2, 64, 16, FP16, 7)
    full = decode.paged_decode_attention(q, k, v, bt, sl, scale)
    for w in (bt.shape[1] * 16, 10**6):
        assert torch.equal(decode.paged_decode_attention(q, k, v, bt, sl, scale, sliding_window=w), full)
    assert torch.equal(decode.paged_decode_attention(q, k, v, bt, sl, scale, sliding_window=0), full)
    part = decode.paged_decode_attention(q, k, v, bt, sl, scale, sliding_window=40)
    assert_close(part, ref.ref_paged_decode(q, k, v, bt, sl, scale, sliding_window=40), FP16)
    assert_close(part[:2], full[:2].double(), FP16, "sequences shorter than the window")
    with pytest.raises(ValueError):
        decode.paged_decode_attention(q, k, v, bt, sl, scale, sliding_window=-1)


@pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda s: f"splits{s}")
def test_contiguous_decode_window(num_splits):
    gen = torch.Generator().manual_seed(8)
    lens, gaps, window = [1, 15, 16, 17, 120], [3, 0, 5, 1, 2], 16
    pool_k, pool_v, st = make_contiguous(lens, gaps, 2, 64, FP16, gen)
    q = torch.randn((len(lens), 4, 64), generator=gen).to(FP16).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_contiguous_decode(q, pool_k, pool_v, st, sl, 0.125, sliding_window=window)
    for a, n in zip(st.tolist(), lens):  # slots before the window: NaN
        pool_k[a : a + max(0, n - window)] = float("nan")
        pool_v[a : a + max(0, n - window)] = float("nan")
    out = decode.contiguous_decode_attention(
        q, pool_k, pool_v, st, sl, 0.125, num_splits=num_splits, out=_nan_out(q), sliding_window=window
    )
    assert_close(out, expect, FP16)


# --------------------------------------------------------------------------------------------------------------------
# prefill
# --------------------------------------------------------------------------------------------------------------------


def _prefill_inputs(ctx, new, num_q_heads, num_kv_heads, head, bs, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in zip(ctx, new)]
    k, v, bt = make_paged(lens, num_kv_heads, head, bs, dtype, gen=gen, extra_blocks=2)
    cu = [0]
    for n in new:
        cu.append(cu[-1] + n)
    q = torch.randn((cu[-1], num_q_heads, head), generator=gen).to(dtype).to(DEVICE)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    ctx_t = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    return lens, k, v, bt, q, cu_t, ctx_t, head**-0.5


def _run_prefill_window(ctx, new, window, bs, dtype=FP16, group=2, num_kv_heads=2, head=64, seed=0, configs=(None,)):
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(
        ctx, new, group * num_kv_heads, num_kv_heads, head, bs, dtype, seed
    )
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, sliding_window=window)
    # the chunk's first token sits at position ctx: blocks wholly before ctx - W + 1 are free
    first_live = _free_blocks_before(k, v, bt, lens, [c - window + 1 for c in ctx])
    for config in configs:
        out = _nan_out(q)

        def call(config=config, out=out):
            return dispatch.paged_prefill_attention(
                q, k, v, bt, cu_t, ctx_t, scale, out=out, config=config, sliding_window=window, max_query_len=max(new)
            )

        _checked(call, bt, first_live, lens, k)
        assert_close(out, expect, dtype, f"prefill W={window} ctx={ctx} new={new} config={config}")
    return lens, k, v, bt, q, cu_t, ctx_t, scale, expect


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("which", range(4), ids=["below_block", "block", "odd", "beyond_context"])
def test_prefill_window(block_size, which):
    """Pure prefill, chunked prefill (the chunk starts mid-sequence), one new token, GQA; the default tiles and
    16 x 16 tiles (more tiles cut by the window's edge)."""
    window = _window_cases(block_size)[which]
    ctx = [0, 5, 37, 2 * block_size + 1, 60]
    new = [40, 9, 30, 1, 17]
    configs = (None, dict(block_m=16, block_n=16)) if which < 3 else (None,)
    _run_prefill_window(ctx, new, window, block_size, seed=10 * block_size + which, configs=configs)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_prefill_window_dtypes_mqa(dtype):
    _run_prefill_window([0, 45], [50, 20], 19, 16, dtype=dtype, group=4, num_kv_heads=1, head=80, seed=11)


@pytest.mark.parametrize("window", [3, 20])
def test_prefill_window_new_kv(window):
    """``new_key``/``new_value``: the context through the table (freed blocks before the window), the new tokens
    from the contiguous tensors (their cache slots NaN)."""
    ctx, new, bs = [0, 5, 37, 60], [40, 9, 30, 1], 8
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, 4, 2, 64, bs, FP16, 12 + window)
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, sliding_window=window)
    kn = torch.cat([ref.gather_kv(k, bt[s], lens[s])[ctx[s] :] for s in range(len(lens))]).contiguous()
    vn = torch.cat([ref.gather_kv(v, bt[s], lens[s])[ctx[s] :] for s in range(len(lens))]).contiguous()
    for s, (c, n) in enumerate(zip(ctx, new)):
        for pos in range(c, c + n):
            k[int(bt[s, pos // bs]), pos % bs] = float("nan")
            v[int(bt[s, pos // bs]), pos % bs] = float("nan")
    first_live = _free_blocks_before(k, v, bt, lens, [c - window + 1 for c in ctx])
    for max_ctx in (None, max(ctx)):
        out = _nan_out(q)

        def call(out=out, max_ctx=max_ctx):
            return dispatch.paged_prefill_attention(
                q,
                k,
                v,
                bt,
                cu_t,
                ctx_t,
                scale,
                out=out,
                new_key=kn,
                new_value=vn,
                max_context_len=max_ctx,
                sliding_window=window,
                max_query_len=max(new),
            )

        _checked(call, bt, first_live, lens)
        assert_close(out, expect, FP16, f"new K/V W={window} max_context_len={max_ctx}")


def test_prefill_window_beyond_context_is_full_attention():
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0, 20], [33, 12], 4, 2, 64, 16, FP16, 13)
    full = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, max_query_len=33)
    for w in (bt.shape[1] * 16, 10**6, 0):
        got = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, max_query_len=33, sliding_window=w)
        assert torch.equal(got, full)
    # longer than one sequence, not the other: the windowed kernel, equal to full attention within rounding
    got = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, max_query_len=33, sliding_window=40)
    assert_close(got, full.double(), FP16)
    with pytest.raises(ValueError):
        dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, sliding_window=-5)


def test_chunked_prefill_window_equals_whole():
    """One pass over 90 tokens == two chunks, the second run after the blocks before its first token's window
    were freed."""
    bs, n, split, window = 8, 90, 61, 21
    lens, k, v, bt, q, _, _, scale = _prefill_inputs([0], [n], 4, 2, 64, bs, FP16, 14)

    def run(rows, ctx):
        cu = torch.tensor([0, rows.stop - rows.start], dtype=torch.int32, device=DEVICE)
        c = torch.tensor([ctx], dtype=torch.int32, device=DEVICE)
        return dispatch.paged_prefill_attention(q[rows], k, v, bt, cu, c, scale, sliding_window=window)

    whole = run(slice(0, n), 0)
    first = run(slice(0, split), 0)
    first_live = _free_blocks_before(k, v, bt, lens, [split - window + 1])
    second = _checked(lambda: run(slice(split, n), split), bt, first_live, lens, k)
    assert_close(torch.cat([first, second]), whole.double(), FP16)


def test_decode_equals_last_prefill_row_with_window():
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0, 0, 0], [1, 40, 77], 4, 2, 64, 16, FP16, 15)
    last = cu_t[1:].long() - 1
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for window in (1, 9, 30):
        p = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, sliding_window=window)
        d = decode.paged_decode_attention(q[last], k, v, bt, sl, scale, sliding_window=window)
        assert_close(d, p[last].double(), FP16, f"W={window}")


def _hopper() -> bool:
    from kernels.attention import prefill_hopper

    return CUDA and prefill_hopper.gluon is not None and torch.cuda.get_device_capability()[0] == 9


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counting(*a, **kw):
        calls.append(kw.get("sliding_window"))
        return real(*a, **kw)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.skipif(not CUDA, reason="the Gluon prefill route exists on the GPU only")
def test_windowed_new_kv_prefill_routes_to_triton(monkeypatch):
    """With new K/V, a windowed call never reaches the Gluon kernel's mixed or contiguous form (they have no
    window), whatever the config asks."""
    from kernels.attention import prefill_hopper

    def refuse(*a, **kw):
        raise AssertionError("windowed new-K/V prefill reached the Gluon kernel")

    for name in ("prefill_wgmma_mixed_attention", "prefill_wgmma_attention"):
        monkeypatch.setattr(prefill_hopper, name, refuse)
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0, 70], [128, 64], 8, 2, 128, 16, torch.bfloat16, 21)
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, sliding_window=50)
    new_k = torch.cat([_gather_rows(k, bt, 0, 0, 128), _gather_rows(k, bt, 1, 70, 64)])
    new_v = torch.cat([_gather_rows(v, bt, 0, 0, 128), _gather_rows(v, bt, 1, 70, 64)])
    for config in (None, {"wgmma": True}):
        got = dispatch.paged_prefill_attention(
            q, k, v, bt, cu_t, ctx_t, scale, config=config, sliding_window=50, new_key=new_k, new_value=new_v
        )
        assert_close(got, expect, torch.bfloat16, f"new K/V, config={config}")


def _gather_rows(cache, bt, s, start, n):
    """Rows ``start .. start + n - 1`` of sequence ``s`` from a paged cache: ``[n, kv_heads, head]``."""
    bs = cache.shape[1]
    return torch.stack([cache[int(bt[s, p // bs]), p % bs] for p in range(start, start + n)])


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel needs a compute-capability-9 GPU")
@pytest.mark.parametrize("block_size", [8, 16, 32, 128])
@pytest.mark.parametrize("window", [1, 7, 16, 127, 128, 129, 300, 1000])
def test_windowed_paged_prefill_on_gluon(monkeypatch, block_size, window):
    """The Gluon kernel's paged form with a window, on the default route: contexts of 0 to 1,000 tokens, chunks of
    1 to 300 (several 128-row work items, the last one partial), windows inside one key tile, on a tile's edge and
    across many; freed blocks are NaN and half their table entries out of range, so a read of either would show."""
    from kernels.attention import prefill_hopper

    calls = _count_calls(monkeypatch, prefill_hopper, "prefill_wgmma_paged_attention")
    ctx = [0, 300, 1000, 37, 129]
    new = [300, 200, 130, 1, 64]
    _run_prefill_window(
        ctx, new, window, block_size, dtype=torch.bfloat16, group=4, num_kv_heads=2, head=128, seed=window
    )
    assert calls == [window], calls


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel needs a compute-capability-9 GPU")
@pytest.mark.parametrize("config", [{"wgmma": {"persistent": False}}, {"wgmma": {"pingpong": False}}])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)  # the Gluon kernel's dtypes
def test_windowed_paged_prefill_on_gluon_forms(monkeypatch, config, dtype):
    """Head size 64, MHA and GQA 8, both dtypes, a grid of one program per item and no ping-pong."""
    from kernels.attention import prefill_hopper

    calls = _count_calls(monkeypatch, prefill_hopper, "prefill_wgmma_paged_attention")
    for group, head in ((1, 64), (8, 128)):
        _run_prefill_window(
            [0, 500, 260], [257, 128, 3], 200, 16, dtype=dtype, group=group, head=head, seed=group, configs=(config,)
        )
    assert calls == [200, 200], calls


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=6, deadline=None)
    @given(
        lens=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=4),
        window=st.integers(1, 80),
        group=st.sampled_from([1, 2, 4]),
        block_size=st.sampled_from([8, 16, 24]),
        num_splits=st.sampled_from([1, 2, None]),
        seed=st.integers(0, 2**16),
    )
    def test_decode_window_hypothesis(lens, window, group, block_size, num_splits, seed):
        _run_decode_window(lens, window, block_size, group=group, seed=seed, calls=[dict(num_splits=num_splits)])

    @settings(max_examples=6, deadline=None)
    @given(
        seqs=st.lists(st.tuples(st.integers(0, 90), st.integers(1, 50)), min_size=1, max_size=3),
        window=st.integers(1, 70),
        group=st.sampled_from([1, 2, 4]),
        block_size=st.sampled_from([8, 16, 24]),
        seed=st.integers(0, 2**16),
    )
    def test_prefill_window_hypothesis(seqs, window, group, block_size, seed):
        ctx, new = [c for c, _ in seqs], [n for _, n in seqs]
        _run_prefill_window(ctx, new, window, block_size, group=group, seed=seed)
except ImportError:  # pragma: no cover
    pass
