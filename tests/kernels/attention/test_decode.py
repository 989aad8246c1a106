"""Paged decode attention (and its contiguous variant) against the torch reference."""

import math
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
from kernels.attention import decode, decode_plan, dispatch  # noqa: E402

SPLITS = [1, 3, None]  # forced single pass, forced split-KV, automatic


def _run_decode(seq_lens, num_q_heads, num_kv_heads, head_size, block_size, dtype, num_splits, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, v, bt = make_paged(seq_lens, num_kv_heads, head_size, block_size, dtype, gen=gen)
    q = torch.randn((len(seq_lens), num_q_heads, head_size), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_size**-0.5
    out = poisoned_like(q)
    res = decode.paged_decode_attention(q, k, v, bt, sl, scale, num_splits=num_splits, out=out)
    assert res is out
    expect = ref.ref_paged_decode(q, k, v, bt, sl, scale)
    assert_close(out, expect, dtype, f"decode lens={seq_lens} splits={num_splits}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_splits", SPLITS, ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_block_boundaries(block_size, num_splits, dtype):
    lens = boundary_lengths(block_size)
    _run_decode(lens, 8, 2, 64, block_size, dtype, num_splits, seed=block_size)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_size", [64, 80, 96, 128, 256])
def test_heads_and_groups(head_size, group, dtype):
    num_kv_heads = 2
    rng = random.Random(head_size * 10 + group)
    lens = [1, 16, 17] + [rng.randint(1, 150) for _ in range(2)]
    for splits in (1, 2):
        _run_decode(lens, num_kv_heads * group, num_kv_heads, head_size, 16, dtype, splits, seed=head_size + group)


@pytest.mark.parametrize("dtype", [DTYPES[0]], ids=dtype_id)
@pytest.mark.parametrize("block_size", [24, 48])
def test_block_size_multiple_of_8(block_size, dtype):
    _run_decode([1, block_size, block_size + 1, 100], 4, 4, 64, block_size, dtype, None)
    _run_decode([1, block_size, block_size + 1, 100], 4, 4, 64, block_size, dtype, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multi_query_long_auto_split(dtype):
    # 1 sequence x 1 KV head: the automatic choice splits the context
    lens = [700]
    splits, part = decode_plan.choose_partition(1, 1, 700, 32, 132, None)
    assert splits > 1
    _run_decode(lens, 8, 1, 128, 16, dtype, None)


@pytest.mark.parametrize(
    "config",
    [
        dict(use_dot=False),
        dict(head_major=True, evict="evict_first"),
        dict(block_n=16, use_dot=False, head_major=True),
        dict(reverse_parts=True),
        dict(prefetch=True, num_stages=1),
        dict(prefetch=True, block_n=16),
        dict(prefetch=True, early_bt=False),
    ],
    ids=["cuda_cores", "head_major_evict", "bn16", "reverse_parts", "prefetch", "prefetch_bn16", "prefetch_late_bt"],
)
@pytest.mark.parametrize("group", [1, 4])
def test_decode_configs(group, config):
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(9 + group)
    lens = [1, 16, 33, 150]
    k, v, bt = make_paged(lens, 2, 80, 16, dtype, gen=gen)
    q = torch.randn((len(lens), 2 * group, 80), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_paged_decode(q, k, v, bt, sl, 0.1)
    for splits in (1, 3):
        out = decode.paged_decode_attention(
            q, k, v, bt, sl, 0.1, num_splits=splits, out=poisoned_like(q), config=config
        )
        assert_close(out, expect, dtype, f"config {config} splits {splits}")


def test_zero_length_gives_zeros():
    dtype = torch.float32
    gen = torch.Generator().manual_seed(1)
    lens = [0, 5, 0]
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    q = torch.randn((3, 4, 64), generator=gen).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for splits in (1, 2):
        out = decode.paged_decode_attention(q, k, v, bt, sl, 0.125, num_splits=splits, out=poisoned_like(q))
        assert not torch.isnan(out).any()
        assert torch.all(out[0] == 0) and torch.all(out[2] == 0)
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.125), dtype)


def test_non_contiguous_cache_strides():
    # the cache may be a view, e.g. one layer of a stacked [2, num_blocks, ...] allocation
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(2)
    lens = [33, 64, 5]
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    kv = torch.stack([k, v], dim=1)  # [num_blocks, 2, block, heads, d]
    kk, vv = kv[:, 0], kv[:, 1]
    assert not kk.is_contiguous()
    q = torch.randn((3, 8, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for splits in (1, 2):
        out = decode.paged_decode_attention(q, kk, vv, bt, sl, 0.125, num_splits=splits, out=poisoned_like(q))
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.125), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_splits", SPLITS, ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("group", [1, 4])
def test_contiguous_decode(group, num_splits, dtype):
    gen = torch.Generator().manual_seed(7 + group)
    num_kv_heads, head_size = 2, 96
    lens = [1, 15, 16, 17, 120, 333]
    gaps = [3, 0, 5, 1, 0, 2]
    pool_k, pool_v, st = make_contiguous(lens, gaps, num_kv_heads, head_size, dtype, gen)
    q = torch.randn((len(lens), num_kv_heads * group, head_size), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = poisoned_like(q)
    decode.contiguous_decode_attention(q, pool_k, pool_v, st, sl, head_size**-0.5, num_splits=num_splits, out=out)
    assert_close(out, ref.ref_contiguous_decode(q, pool_k, pool_v, st, sl, head_size**-0.5), dtype)


def test_decode_matches_prefill_of_one_token():
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(3)
    lens = [1, 40, 77]
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    q = torch.randn((3, 4, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    d = decode.paged_decode_attention(q, k, v, bt, sl, 0.125)
    cu = torch.arange(4, dtype=torch.int32, device=DEVICE)
    p = dispatch.paged_prefill_attention(q, k, v, bt, cu, sl - 1, 0.125)
    assert_close(d, p.to(torch.float64), dtype)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=12, deadline=None)
    @given(
        lens=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=4),
        num_kv_heads=st.sampled_from([1, 2]),
        group=st.sampled_from([1, 2, 4, 8]),
        head_size=st.sampled_from([64, 80, 96, 128]),
        block_size=st.sampled_from([8, 16, 32]),
        num_splits=st.sampled_from([1, 2, 5, None]),
        seed=st.integers(0, 2**16),
    )
    def test_decode_hypothesis(lens, num_kv_heads, group, head_size, block_size, num_splits, seed):
        _run_decode(lens, num_kv_heads * group, num_kv_heads, head_size, block_size, DTYPES[0], num_splits, seed=seed)
except ImportError:  # pragma: no cover
    pass


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (a cache of more than 2**31 elements)")
def test_int64_offsets_large_cache():
    # > 2**31 elements per cache; the sequences use blocks at the very end of it
    dtype = torch.bfloat16
    block_size, heads, d = 16, 8, 128
    per_block = block_size * heads * d
    num_blocks = (2**31) // per_block + 64
    free = torch.cuda.mem_get_info()[0]
    if 2 * num_blocks * per_block * 2 > free * 0.8:
        pytest.skip("not enough GPU memory for a 2**31-element cache")
    k = torch.empty((num_blocks, block_size, heads, d), dtype=dtype, device="cuda")
    v = torch.empty_like(k)
    lens = [200, 1000]
    nb = [math.ceil(n / block_size) for n in lens]
    width = max(nb)
    bt = torch.zeros((2, width), dtype=torch.int32, device="cuda")
    top = num_blocks - 1
    for s, n in enumerate(nb):
        blocks = torch.arange(top - n + 1, top + 1, device="cuda").flip(0)
        top -= n
        bt[s, :n] = blocks.int()
        k[blocks.long()] = torch.randn((n, block_size, heads, d), device="cuda").to(dtype)
        v[blocks.long()] = torch.randn((n, block_size, heads, d), device="cuda").to(dtype)
    assert int(bt.max()) * per_block > 2**31
    q = torch.randn((2, 32, d), device="cuda").to(dtype)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    for splits in (1, 4):
        out = decode.paged_decode_attention(q, k, v, bt, sl, d**-0.5, num_splits=splits, out=poisoned_like(q))
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, d**-0.5), dtype, "int64 decode")
    # write_kv / copy_blocks at the far end of the cache
    from kernels import cache_ops

    key = torch.randn((3, heads, d), device="cuda").to(dtype)
    slots = torch.tensor(
        [(num_blocks - 1) * block_size + 15, -1, (num_blocks - 2) * block_size], dtype=torch.int64, device="cuda"
    )
    cache_ops.write_kv(key, key, k, v, slots)
    assert torch.equal(k[num_blocks - 1, 15], key[0]) and torch.equal(v[num_blocks - 2, 0], key[2])
    cache_ops.copy_blocks([k, v], torch.tensor([[num_blocks - 1, 0]], device="cuda"))
    assert torch.equal(k[0], k[num_blocks - 1]) and torch.equal(v[0], v[num_blocks - 1])
    del k, v
    torch.cuda.empty_cache()


# fp16, plus bf16 on CUDA (fp32 adds nothing here and is slow under the interpreter)
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
def test_block_size_one_and_explicit_max_seq_len(dtype):
    # one-token blocks (how the GPU harness reads a contiguous extent through a block table),
    # and max_seq_len passed as the true maximum instead of the table width
    gen = torch.Generator().manual_seed(21)
    lens = [1, 7, 300]
    k, v, bt = make_paged(lens, 2, 64, 1, dtype, gen=gen)
    q = torch.randn((len(lens), 8, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_paged_decode(q, k, v, bt, sl, 0.125)
    for splits in (None, 1, 2):
        out = decode.paged_decode_attention(
            q, k, v, bt, sl, 0.125, max_seq_len=max(lens), num_splits=splits, out=poisoned_like(q)
        )
        assert_close(out, expect, dtype, f"block_size 1, splits {splits}")


# --------------------------------------------------------------------------------------
# fused split-KV reduce (atomic completion counters) and the host hints
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
@pytest.mark.parametrize("group", [1, 4, 8])
def test_fused_reduce_matches_two_kernel_path(group, dtype):
    # several splits, a zero-length row, a one-partition row (written directly) and rows of 2-7 partitions;
    # each path is called twice so a counter not reset by the first call shows up in the second
    gen = torch.Generator().manual_seed(31 + group)
    lens = [0, 5, 64, 65, 200, 447]
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for call in range(2):
        q = torch.randn((len(lens), 2 * group, 64), generator=gen).to(dtype).to(DEVICE)
        expect = ref.ref_paged_decode(q, k, v, bt, sl, 0.125)
        for splits in (2, 7):
            for fused in (True, False):
                out = decode.paged_decode_attention(
                    q, k, v, bt, sl, 0.125, num_splits=splits, fused_reduce=fused, out=poisoned_like(q)
                )
                assert_close(out, expect, dtype, f"call {call} splits {splits} fused {fused}")
                assert torch.all(out[0] == 0)
    # every counter is back to 0 (the combining program resets it)
    bufs = decode._COUNTERS[(q.device.type, q.device.index)]
    assert int(bufs[-1].abs().sum()) == 0


def test_fused_reduce_counter_reuse_across_shapes():
    # the same counter slots serve calls of different batch and head counts, one after another
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(41)
    for lens, hkv in (([300, 129, 1], 2), ([77, 500], 1), ([300, 129, 1, 33], 2)):
        k, v, bt = make_paged(lens, hkv, 64, 16, dtype, gen=gen)
        q = torch.randn((len(lens), 4, 64), generator=gen).to(dtype).to(DEVICE)
        sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        out = decode.paged_decode_attention(q, k, v, bt, sl, 0.125, num_splits=5, out=poisoned_like(q))
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.125), dtype, f"lens {lens}")


def test_fused_reduce_contiguous_decode():
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(43)
    lens, starts = [250, 3, 0, 90], [0, 260, 270, 270]
    pool_k = torch.randn((400, 2, 64), generator=gen).to(dtype).to(DEVICE)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn((4, 8, 64), generator=gen).to(dtype).to(DEVICE)
    st_ = torch.tensor(starts, dtype=torch.int64, device=DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_contiguous_decode(q, pool_k, pool_v, st_, sl, 0.125)
    for _ in range(2):
        out = decode.contiguous_decode_attention(
            q, pool_k, pool_v, st_, sl, 0.125, num_splits=4, max_seq_len=250, out=poisoned_like(q)
        )
        assert_close(out, expect, dtype, "contiguous fused")


def test_min_seq_len_hint():
    # the hint lifts the partition cap only for near-uniform lengths and a batch that fills a wave
    assert decode_plan.choose_partition(64, 8, 8192, 64, 132, None)[0] == 4  # capped at 2,048 tokens
    assert decode_plan.choose_partition(64, 8, 8192, 64, 132, None, min_len=8192)[0] == 1
    assert decode_plan.choose_partition(64, 8, 8192, 64, 132, None, min_len=100)[0] == 4  # mixed: cap kept
    assert decode_plan.choose_partition(16, 8, 8192, 64, 132, None, min_len=8192) == (4, 2048)  # small batch: kept
    # a wrong hint (lengths far below it) costs speed only
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(47)
    lens = [1, 300, 2]
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    q = torch.randn((3, 4, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for hint in (300, 290):
        out = decode.paged_decode_attention(
            q, k, v, bt, sl, 0.125, max_seq_len=300, min_seq_len=hint, out=poisoned_like(q)
        )
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.125), dtype, f"hint {hint}")


@pytest.mark.skipif(not CUDA, reason="needs CUDA graphs")
def test_fused_reduce_in_cuda_graph():
    # captured once, replayed with new q values and new lengths: the counters must reset on the device
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(53)
    lens = [1000, 17, 513, 2048]
    k, v, bt = make_paged(lens, 8, 128, 16, dtype, gen=gen)
    q = torch.randn((4, 32, 128), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)

    def call():
        decode.paged_decode_attention(
            q, k, v, bt, sl, 0.088, num_splits=8, max_seq_len=2048, out=out, fused_reduce=True
        )

    call()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call()
    for rep in range(3):
        q.copy_(torch.randn((4, 32, 128), generator=gen).to(dtype))
        # only shorter than the cached data (slots past it are NaN); 513 -> 313 -> 113 goes from 3 partitions
        # to 2 to 1 (the direct-write path)
        sl.copy_(
            torch.tensor(
                [lens[0] - 7 * rep, lens[1] - 5 * rep, lens[2] - 200 * rep, lens[3] - 300 * rep], dtype=torch.int32
            )
        )
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.088), dtype, f"replay {rep}")


# --------------------------------------------------------------------------------------
# several KV heads per program (block-diagonal q tile)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [DTYPES[0]], ids=dtype_id)
@pytest.mark.parametrize("group,hp", [(1, 2), (1, 4), (4, 2), (4, 4), (8, 2)])
@pytest.mark.parametrize("head_size", [64, 80])
def test_heads_per_program(group, hp, head_size, dtype):
    # hp KV heads share one program: each token's hp heads are one contiguous run, q is block-diagonal;
    # every path that stores output (single pass, two-kernel split, fused split, empty rows) is checked
    num_kv_heads = 4
    gen = torch.Generator().manual_seed(100 * group + 10 * hp + head_size)
    lens = [0, 1, 16, 17, 95]
    k, v, bt = make_paged(lens, num_kv_heads, head_size, 16, dtype, gen=gen)
    q = torch.randn((len(lens), num_kv_heads * group, head_size), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_paged_decode(q, k, v, bt, sl, 0.1)
    for splits, fused in ((1, None), (3, False), (3, True)):
        out = decode.paged_decode_attention(
            q,
            k,
            v,
            bt,
            sl,
            0.1,
            num_splits=splits,
            fused_reduce=fused,
            out=poisoned_like(q),
            config=dict(heads_per_program=hp),
        )
        assert_close(out, expect, dtype, f"hp {hp} splits {splits} fused {fused}")
        assert torch.all(out[0] == 0)


def test_heads_per_program_contiguous_and_strided_v():
    # contiguous pools, and a V cache whose head stride differs from K's (a view into a wider buffer)
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(5)
    lens, starts = [40, 0, 130], [0, 45, 45]
    pool_k = torch.randn((180, 4, 64), generator=gen).to(dtype).to(DEVICE)
    wide_v = torch.randn((180, 4, 96), generator=gen).to(dtype).to(DEVICE)
    pool_v = wide_v[:, :, :64]
    q = torch.randn((3, 8, 64), generator=gen).to(dtype).to(DEVICE)
    st = torch.tensor(starts, dtype=torch.int64, device=DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    expect = ref.ref_contiguous_decode(q, pool_k, pool_v, st, sl, 0.125)
    for splits in (1, 2):
        for cfg in (dict(heads_per_program=4), dict(heads_per_program=4, prefetch=True, block_n=16)):
            out = decode.contiguous_decode_attention(
                q, pool_k, pool_v, st, sl, 0.125, num_splits=splits, out=poisoned_like(q), config=cfg
            )
            assert_close(out, expect, dtype, f"splits {splits} {cfg}")
    with pytest.raises(AssertionError, match="heads_per_program"):
        decode.contiguous_decode_attention(q, pool_k, pool_v, st, sl, 0.125, config=dict(heads_per_program=3))


# --------------------------------------------------------------------------------------
# the min_seq_len test made on the device (no host hint)
# --------------------------------------------------------------------------------------


@triton.jit
def _partition_probe(lens_ptr, out_ptr, num_seqs, NSEQ_PAD: tl.constexpr):
    tl.store(out_ptr, decode._partition_on_device(lens_ptr, num_seqs, 64, 500, 0.9, NSEQ_PAD))


@pytest.mark.parametrize(
    "lens,num_seqs,expect",
    [
        ([200, 190, 181], 3, 500),  # shortest 181 >= 0.9 x 200 = 180: uniform partition
        ([200, 190, 179], 3, 64),  # 179 < 180: the capped partition
        ([200, 190, 5, 7], 2, 500),  # entries past num_seqs are not read
        ([0, 0], 2, 500),  # all empty: uniform (no partition is used)
        ([1000, 0], 2, 64),
    ],
)
def test_partition_on_device(lens, num_seqs, expect):
    t = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _partition_probe[(1,)](t, out, num_seqs, NSEQ_PAD=triton.next_power_of_2(len(lens)))
    assert int(out.item()) == expect


@pytest.mark.parametrize("fused", [None, True, False], ids=["auto", "fused", "two_kernel"])
@pytest.mark.parametrize("lens", [[200, 190, 195, 181], [200, 19, 195, 0]], ids=["uniform", "mixed"])
def test_decode_auto_uniform(monkeypatch, lens, fused):
    # shrink the machine and the cap so that a small batch fills a wave and is split by the cap; the kernel then
    # chooses between the capped and the uniform partition from the lengths, and both must give the reference
    monkeypatch.setattr(decode, "num_sms", lambda device: 2)
    monkeypatch.setattr(decode_plan, "num_sms", lambda device: 2)
    monkeypatch.setattr(decode_plan, "MAX_PARTITION", 64)
    monkeypatch.setattr(decode_plan, "MIN_PARTITION", 32)
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(sum(lens))
    k, v, bt = make_paged(lens, 2, 64, 16, dtype, gen=gen)
    q = torch.randn((len(lens), 4, 64), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    splits, part, auto, upart = decode_plan.split_plan(len(lens), 2, bt.shape[1] * 16, 32, 2, None, None)
    assert auto and splits > 1 and upart > part
    for call in range(2):  # twice: the fused path's counters must be back to 0 after the first
        out = decode.paged_decode_attention(q, k, v, bt, sl, 0.125, out=poisoned_like(q), fused_reduce=fused)
        assert_close(out, ref.ref_paged_decode(q, k, v, bt, sl, 0.125), dtype, f"lens {lens} call {call}")
