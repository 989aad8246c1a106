"""fp8 (float8_e4m3fn) KV caches with per-tensor ``k_scale``/``v_scale``: ``write_kv`` against hand-computed e4m3
bytes and torch's rounding, and the paged decode (split-KV and balanced), contiguous decode and paged prefill (every
key through the table, and new K/V from contiguous tensors) against the torch reference, with and without a sliding
window.

Tolerance: the kernels read the same e4m3 values the reference dequantizes (``cache.float() * scale``), and their
conversion to q's dtype is exact (every e4m3 value is an fp16 and a bf16 value), so the fp8 rounding is in the inputs
of both and cancels from the compare. What is left is what the fp16/bf16/fp32 kernels already differ by (P rounded to
q's dtype before P.V, summation order, the output's rounding): ``_kernel_testutil.TOL`` of q's dtype, which for fp32 q
is 1e-4 absolute, a tight check of the fp8 read path and of the scales (a missing ``v_scale`` would scale the output
by 1 / 0.45, a missing ``k_scale`` change the softmax temperature by 0.3). On Hopper the paged prefill runs the Gluon
kernel, whose products are fp16 (K/V converted to fp16, exact; bf16 q rewritten as fp16, exact for the N(0, 1) values
here down to 2**-14; P in fp16, finer than bf16), so bf16's tolerance covers it.

The Triton interpreter (``TRITON_INTERPRET=1``, the CPU runs) loads and widens fp8 correctly, except that it reads the
NaN byte 0x7F as 480. Its fp32-to-fp8 conversion is wrong (1.96 becomes 1.0: the rounding carry into the exponent is
dropped; ties round away from zero; subnormals are mis-rounded), which is why ``write_kv`` computes the e4m3 bytes with
integer arithmetic on every device. So here a freed NaN block that a kernel read would show as a wrong output rather
than a NaN; under the interpreter every load is also recorded, to show that no block-table entry before a window is
read at all.
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import CUDA, DEVICE, DTYPES, assert_close, dtype_id, make_paged  # noqa: E402

from kernels import cache_ops  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.attention import decode, dispatch  # noqa: E402
from kernels.attention.common import interpreting  # noqa: E402

F8 = torch.float8_e4m3fn
FP16 = DTYPES[0]
# q dtypes: fp16 and fp32 on the CPU (the interpreter mishandles bf16), bf16 as well on the GPU
Q_DTYPES = DTYPES
# not powers of two, so that a scale applied twice, or not at all, cannot cancel
K_SCALE, V_SCALE = 0.3, 0.45
OUT_OF_RANGE = 2**31 - 7


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.cpu().view(torch.uint8)


# --------------------------------------------------------------------------------------------------------------------
# write_kv
# --------------------------------------------------------------------------------------------------------------------

# (value, scale, e4m3 byte of value / scale, the byte read back times scale): e4m3fn is 1 sign, 4 exponent (bias 7)
# and 3 mantissa bits; normals are (1 + m/8) * 2**(e - 7), subnormals (e = 0) m * 2**-9; the largest finite value is
# 0x7E = 1.75 * 2**8 = 448
HAND = [
    (1.0, 1.0, 0x38, 1.0),  # 2**0: exponent 7 -> 0b0111_000
    (0.3, 0.5, 0x32, 0.3125),  # 0.6 = 1.2 * 2**-1: mantissa 1.6/8 rounds to 2/8 -> 0.625; exponent 6 -> 0b0110_010
    (1000.0, 1.0, 0x7E, 448.0),  # beyond 448: saturates to 448 (not NaN)
    (1000.0, 0.5, 0x7E, 224.0),  # 2000 -> 448, read back as 448 * 0.5
    (-1000.0, 0.5, 0xFE, -224.0),  # -448: the sign bit set
    (464.0, 1.0, 0x7E, 448.0),  # halfway between 448 and 480 (not finite in e4m3fn): saturates
    (1.0625, 1.0, 0x38, 1.0),  # halfway between 1.0 (m=0) and 1.125 (m=1): ties to even
    (1.1875, 1.0, 0x3A, 1.25),  # halfway between 1.125 (m=1) and 1.25 (m=2): ties to even
    (1.96, 1.0, 0x40, 2.0),  # mantissa 7.68/8 rounds to 8/8: the carry makes exponent 8, mantissa 0
    (3.0, 1.5, 0x40, 3.0),  # 3.0 / 1.5 = 2.0 exactly
    (2.0**-10, 1.0, 0x00, 0.0),  # half the smallest subnormal 2**-9: ties to even (0)
    (3 * 2.0**-10, 1.0, 0x02, 2.0**-8),  # 1.5 * 2**-9: ties to even (2 * 2**-9)
    (0.0017, 1.0, 0x01, 2.0**-9),  # 0.87 * 2**-9 rounds to 1 * 2**-9
    (2.0**-6, 1.0, 0x08, 2.0**-6),  # the smallest normal: exponent 1, mantissa 0
    (-0.0, 1.0, 0x80, -0.0),  # negative zero keeps its sign
]


@pytest.mark.parametrize("x,scale,byte,back", HAND, ids=[f"{x:g}/{s:g}" for x, s, _, _ in HAND])
def test_write_kv_fp8_hand_values(x, scale, byte, back):
    """One value written to slot 2 of a NaN cache: the e4m3 byte and its value read back (torch's decoding), for K
    and for the negated value in V (only the sign bit differs); the other slots keep their NaN bytes (0x7F)."""
    kc = torch.full((1, 4, 1, 16), float("nan"), dtype=F8, device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    key = torch.full((1, 1, 16), x, dtype=torch.float32, device=DEVICE)
    cache_ops.write_kv(key, -key, kc, vc, torch.tensor([2], device=DEVICE), k_scale=scale, v_scale=scale)
    kb, vb = _bytes(kc)[0, :, 0], _bytes(vc)[0, :, 0]
    assert (kb[2] == byte).all(), [hex(b) for b in kb[2].tolist()]
    assert (vb[2] == byte ^ 0x80).all(), [hex(b) for b in vb[2].tolist()]
    assert (kb[[0, 1, 3]] == 0x7F).all() and (vb[[0, 1, 3]] == 0x7F).all()
    got = kc[0, 2, 0, 0].float().item() * scale
    assert got == back and math.copysign(1.0, got) == math.copysign(1.0, back)


@pytest.mark.parametrize("key_dtype", Q_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("scale", [1.0, 0.37, 3.1e-3, 40.0])
def test_write_kv_fp8_matches_torch_rounding(key_dtype, scale):
    """Every magnitude from fp8's subnormals to past its saturation, ties included, bit-equal to
    ``reference.quantize_fp8`` (fp32 division, clamp to +-448, torch's round-to-nearest-even conversion); padding
    slots write nothing."""
    gen = torch.Generator().manual_seed(int(scale * 1000))
    n, heads, d, bs, nb = 40, 2, 64, 16, 4
    mags = torch.logspace(-12, 10, n * heads * d, base=2.0)[torch.randperm(n * heads * d, generator=gen)]
    key = (torch.randn((n, heads, d), generator=gen).sign() * mags.view(n, heads, d) * scale).to(key_dtype)
    # the e4m3 grid's midpoints in the first rows (exact ties at scale 1): normals (8 + m + 0.5) * 2**(E - 3) for
    # exponents E = -6 .. 8, subnormals (m + 0.5) * 2**-9
    normal_ties = [(8 + m + 0.5) * 2.0 ** (e - 3) for e in range(-6, 9) for m in range(8)]
    ties = torch.tensor(normal_ties + [(m + 0.5) * 2.0**-9 for m in range(8)]) * scale
    key.view(-1)[: ties.numel()] = ties.to(key_dtype)
    val = -key.flip(0)
    slots = torch.randperm(nb * bs, generator=gen)[:n]
    slots[3] = -1
    kc = torch.full((nb, bs, heads, d), float("nan"), dtype=F8)
    vc = torch.full_like(kc, float("nan"))
    kr, vr = kc.clone(), vc.clone()
    ref.ref_write_kv(key, val, kr, vr, slots, k_scale=scale, v_scale=scale)
    kd, vd = kc.to(DEVICE), vc.to(DEVICE)
    cache_ops.write_kv(key.to(DEVICE), val.to(DEVICE), kd, vd, slots.to(DEVICE), k_scale=scale, v_scale=scale)
    assert torch.equal(_bytes(kd), _bytes(kr)) and torch.equal(_bytes(vd), _bytes(vr))


def test_write_kv_fp8_then_decode_round_trip():
    """K/V written by ``write_kv`` with the scales, then decoded with the same scales, equal the reference on the
    written cache, and stay near attention over the unquantized K/V: e4m3 rounds each element by up to 2**-4
    relative, which on this draw moves outputs of up to 1.6 by at most 0.051 (bound 0.1)."""
    gen = torch.Generator().manual_seed(3)
    lens, heads, d, bs = [20, 37], 2, 64, 16
    kf, vf, bt = make_paged(lens, heads, d, bs, torch.float32, gen=gen, extra_blocks=1)
    k8 = torch.full(kf.shape, float("nan"), dtype=F8, device=DEVICE)
    v8 = torch.full_like(k8, float("nan"))
    for s, n in enumerate(lens):
        pos = torch.arange(n)
        slots = (bt[s].cpu().long()[pos // bs] * bs + pos % bs).to(DEVICE)
        rows = ref.gather_kv(kf, bt[s], n), ref.gather_kv(vf, bt[s], n)
        cache_ops.write_kv(*rows, k8, v8, slots, k_scale=K_SCALE, v_scale=V_SCALE)
    q = torch.randn((2, 8, d), generator=gen).to(FP16).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = decode.paged_decode_attention(q, k8, v8, bt, sl, 0.125, k_scale=K_SCALE, v_scale=V_SCALE)
    assert_close(out, ref.ref_paged_decode(q, k8, v8, bt, sl, 0.125, k_scale=K_SCALE, v_scale=V_SCALE), FP16)
    exact = ref.ref_paged_decode(q.float(), kf, vf, bt, sl, 0.125)
    assert (out.float() - exact).abs().max().item() < 0.1


# --------------------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------------------


def _small_call_inputs(dtype=F8):
    k = torch.zeros((2, 16, 1, 16), dtype=dtype, device=DEVICE)
    q = torch.zeros((1, 1, 16), dtype=FP16, device=DEVICE)
    bt = torch.zeros((1, 1), dtype=torch.int32, device=DEVICE)
    sl = torch.ones(1, dtype=torch.int32, device=DEVICE)
    cu = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    ctx = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    return k, q, bt, sl, cu, ctx


def _entry_points(k, v, q, bt, sl, cu, ctx):
    """Each public entry point that takes scales, as a function of ``(k_scale, v_scale)``."""
    key = torch.zeros((1, 1, 16), device=DEVICE)
    slot = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    return {
        "write_kv": lambda ks, vs: cache_ops.write_kv(key, key, k, v, slot, k_scale=ks, v_scale=vs),
        "decode": lambda ks, vs: decode.paged_decode_attention(q, k, v, bt, sl, 1.0, k_scale=ks, v_scale=vs),
        "prefill": lambda ks, vs: dispatch.paged_prefill_attention(q, k, v, bt, cu, ctx, 1.0, k_scale=ks, v_scale=vs),
    }


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")], ids=["zero", "negative", "nan", "inf"])
def test_fp8_bad_scales_raise(bad):
    k, q, bt, sl, cu, ctx = _small_call_inputs()
    for fn in _entry_points(k, k.clone(), q, bt, sl, cu, ctx).values():
        with pytest.raises(ValueError, match="k_scale must be a finite positive"):
            fn(bad, 1.0)
        with pytest.raises(ValueError, match="v_scale must be a finite positive"):
            fn(1.0, bad)


def test_scales_on_16_bit_caches_raise():
    k, q, bt, sl, cu, ctx = _small_call_inputs(FP16)
    for fn in _entry_points(k, k.clone(), q, bt, sl, cu, ctx).values():
        with pytest.raises(ValueError, match="float8_e4m3fn caches only"):
            fn(2.0, 1.0)
        fn(1.0, 1.0)  # the defaults are fine


def test_fp8_cache_formats_raise():
    k, q, bt, sl, cu, ctx = _small_call_inputs()
    mixed = _entry_points(k, k.to(FP16), q, bt, sl, cu, ctx)
    e5m2 = _entry_points(k.to(torch.float8_e5m2), k.to(torch.float8_e5m2), q, bt, sl, cu, ctx)
    for name in mixed:
        with pytest.raises(ValueError, match="both be float8_e4m3fn or neither"):
            mixed[name](1.0, 1.0)
        with pytest.raises(ValueError, match="must be torch.float8_e4m3fn"):
            e5m2[name](1.0, 1.0)


def test_fp8_needs_compute_capability_8_9(monkeypatch):
    """A GPU below 8.9 (e.g. an A100, 8.0) is refused with the requirement named; 8.9 and 9.0 pass the check."""
    k, q, bt, sl, cu, ctx = _small_call_inputs()
    for cap in ((8, 0), (8, 6)):
        monkeypatch.setattr(cache_ops, "_capability", lambda device, cap=cap: cap)
        for fn in _entry_points(k, k.clone(), q, bt, sl, cu, ctx).values():
            with pytest.raises(ValueError, match=r"compute capability >= 8\.9"):
                fn(1.0, 1.0)
    for cap in ((8, 9), (9, 0)):
        monkeypatch.setattr(cache_ops, "_capability", lambda device, cap=cap: cap)
        assert cache_ops.check_kv_cache(k, k, 1.0, 1.0) is True
    if CUDA and torch.cuda.get_device_capability() < (8, 9):  # the real check on an old GPU
        monkeypatch.undo()
        with pytest.raises(ValueError, match="8.9"):
            decode.paged_decode_attention(q, k, k.clone(), bt, sl, 1.0)


def test_fp8_new_kv_must_stay_16_bit():
    k, q, bt, sl, cu, ctx = _small_call_inputs()
    new = torch.zeros((1, 1, 16), dtype=F8, device=DEVICE)
    with pytest.raises(ValueError, match="stay in q's dtype"):
        dispatch.paged_prefill_attention(q, k, k.clone(), bt, cu, ctx, 1.0, new_key=new, new_value=new)


# --------------------------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------------------------


def _fp8_paged(lens, num_kv_heads, head, bs, gen, extra_blocks=2):
    """fp8 caches whose values, times the scales, are about N(0, 1); unused slots NaN (0x7F)."""
    kf, vf, bt = make_paged(lens, num_kv_heads, head, bs, torch.float32, gen=gen, extra_blocks=extra_blocks)
    return ref.quantize_fp8(kf, K_SCALE), ref.quantize_fp8(vf, V_SCALE), bt


def _free_blocks_before(k, v, bt, seq_lens, first_pos):
    """Return the blocks of sequence ``s`` wholly before position ``first_pos[s]`` to the "pool": fill them with NaN
    and point their table entries at a NaN block or out of range. Returns the first live block of each sequence."""
    bs = k.shape[1]
    used = set()
    for s, n in enumerate(seq_lens):
        used.update(int(b) for b in bt[s, : math.ceil(n / bs)].tolist())
    nan_block = min(set(range(k.shape[0])) - used)  # make_paged's extra blocks are NaN
    first_live = []
    for s, p in enumerate(first_pos):
        j0 = max(0, p) // bs
        for j in range(j0):
            k[int(bt[s, j])] = float("nan")
            v[int(bt[s, j])] = float("nan")
            bt[s, j] = nan_block if j % 2 == 0 else OUT_OF_RANGE
        first_live.append(j0)
    return first_live


def _checked(fn, bt, first_live, k=None, kv_tokens=None):
    """Run ``fn``; under the interpreter also check that no block-table entry before a window was read (and, given
    ``kv_tokens``, that exactly that many distinct fp8 K rows were: one byte per element)."""
    if not interpreting():
        return fn()
    from kernels.bench.loads import bytes_read, elements_read, record_loads

    with record_loads() as loads:
        res = fn()
    for idx in set(elements_read(loads, bt).tolist()):
        s, j = divmod(idx, bt.stride(0))
        assert first_live[s] <= j, f"sequence {s}: block-table entry {j} read, before the window"
    if kv_tokens is not None:
        row = k.shape[2] * k.shape[3]  # bytes of one token's K row in fp8
        _, distinct = bytes_read(loads, k)
        assert distinct == kv_tokens * row, f"read {distinct / row} fp8 K rows, the windows hold {kv_tokens}"
    return res


def _run_decode(lens, window, dtype, calls, *, group=4, num_kv_heads=2, head=64, bs=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, v, bt = _fp8_paged(lens, num_kv_heads, head, bs, gen)
    q = torch.randn((len(lens), group * num_kv_heads, head), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    scale = head**-0.5
    expect = ref.ref_paged_decode(q, k, v, bt, sl, scale, sliding_window=window, k_scale=K_SCALE, v_scale=V_SCALE)
    w = window or 0
    first_live = _free_blocks_before(k, v, bt, lens, [n - w for n in lens]) if w else [0] * len(lens)
    tokens = sum(min(n, w) if w else n for n in lens)
    for kw in calls:
        out = torch.full_like(q, float("nan"))

        def call(kw=kw, out=out):
            return decode.paged_decode_attention(
                q, k, v, bt, sl, scale, out=out, sliding_window=window, k_scale=K_SCALE, v_scale=V_SCALE, **kw
            )

        _checked(call, bt, first_live, k, tokens)
        assert_close(out, expect, dtype, f"fp8 decode W={window} lens={lens} {kw}")


@pytest.mark.parametrize("dtype", Q_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("window", [None, 21], ids=["full", "window21"])
def test_decode_fp8(dtype, window):
    """Single pass, split-KV (two-kernel reduce) and the automatic choice; lengths 0, below a block, block
    boundaries and longer than the window. With the window the blocks before it are freed (NaN)."""
    lens = [0, 5, 16, 17, 40, 70]
    _run_decode(lens, window, dtype, [dict(num_splits=1), dict(num_splits=3), {}], seed=1)


def test_decode_fp8_balanced_and_configs():
    """The stream-K kernel (1 and 7 programs), the fused reduce, register prefetch, two KV heads per program and
    the CUDA-core dots, with the window."""
    calls = [
        dict(config={"balanced": True, "programs": 1}),
        dict(config={"balanced": True, "programs": 7}),
        dict(num_splits=3, fused_reduce=True),
        dict(config={"prefetch": True, "num_stages": 1}, num_splits=2),
        dict(config={"heads_per_program": 2}, num_splits=2),
        dict(config={"use_dot": False}, num_splits=2),
    ]
    _run_decode([7, 90, 33], 19, FP16, calls, bs=8, seed=2)


def test_decode_fp8_mha_head80():
    _run_decode([3, 50], 24, FP16, [dict(num_splits=2)], group=1, head=80, seed=3)


def test_contiguous_decode_fp8():
    gen = torch.Generator().manual_seed(4)
    lens, starts, window = [1, 17, 40], [2, 5, 30], 16
    pool_k = torch.full((80, 2, 64), float("nan"))
    pool_v = torch.full_like(pool_k, float("nan"))
    for a, n in zip(starts, lens):
        pool_k[a : a + n] = torch.randn((n, 2, 64), generator=gen)
        pool_v[a : a + n] = torch.randn((n, 2, 64), generator=gen)
    k8, v8 = ref.quantize_fp8(pool_k, K_SCALE).to(DEVICE), ref.quantize_fp8(pool_v, V_SCALE).to(DEVICE)
    st = torch.tensor(starts, dtype=torch.int64, device=DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn((3, 4, 64), generator=gen).to(FP16).to(DEVICE)
    for w in (None, window):
        expect = ref.ref_contiguous_decode(q, k8, v8, st, sl, 0.125, sliding_window=w, k_scale=K_SCALE, v_scale=V_SCALE)
        out = decode.contiguous_decode_attention(
            q, k8, v8, st, sl, 0.125, num_splits=2, sliding_window=w, k_scale=K_SCALE, v_scale=V_SCALE
        )
        assert_close(out, expect, FP16, f"contiguous fp8 W={w}")


# --------------------------------------------------------------------------------------------------------------------
# prefill
# --------------------------------------------------------------------------------------------------------------------


def _prefill_inputs(ctx, new, group, num_kv_heads, head, bs, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in zip(ctx, new)]
    k, v, bt = _fp8_paged(lens, num_kv_heads, head, bs, gen)
    cu = [0]
    for n in new:
        cu.append(cu[-1] + n)
    q = torch.randn((cu[-1], group * num_kv_heads, head), generator=gen).to(dtype).to(DEVICE)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    ctx_t = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    return lens, k, v, bt, q, cu_t, ctx_t, head**-0.5


@pytest.mark.parametrize("dtype", Q_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("window", [None, 3, 20], ids=["full", "window3", "window20"])
def test_prefill_fp8_paged(dtype, window):
    """Every key through the table: pure prefill, chunked prefill (the chunk starts mid-sequence) and one new token,
    default tiles and 16 x 16 tiles (more tiles cut by the window's edge); freed blocks before each window."""
    ctx, new, bs = [0, 5, 37, 20], [40, 9, 30, 1], 8
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, 2, 2, 64, bs, dtype, seed=5)
    kw = dict(sliding_window=window, k_scale=K_SCALE, v_scale=V_SCALE)
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, **kw)
    w = window or 0
    first_live = _free_blocks_before(k, v, bt, lens, [c - w + 1 for c in ctx]) if w else [0] * len(ctx)
    configs = (None, dict(block_m=16, block_n=16)) if dtype == FP16 else (None,)
    for config in configs:
        out = torch.full_like(q, float("nan"))

        def call(config=config, out=out):
            return dispatch.paged_prefill_attention(
                q, k, v, bt, cu_t, ctx_t, scale, out=out, config=config, max_query_len=max(new), **kw
            )

        _checked(call, bt, first_live)
        assert_close(out, expect, dtype, f"fp8 prefill W={window} config={config}")


@pytest.mark.parametrize("window", [None, 3, 20], ids=["full", "window3", "window20"])
def test_prefill_fp8_new_kv(window):
    """``new_key``/``new_value`` in q's dtype, unscaled, with the context from the fp8 cache (its new-token slots
    NaN, blocks before the window freed). The reference is attention over one fp32 cache holding the dequantized
    context and the new tokens' K/V as given."""
    ctx, new, bs = [0, 5, 37, 60], [40, 9, 30, 1], 8
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, 2, 2, 64, bs, FP16, seed=6 + (window or 0))
    gen = torch.Generator().manual_seed(7)
    kn = torch.randn((sum(new), 2, 64), generator=gen).to(FP16).to(DEVICE)
    vn = torch.randn((sum(new), 2, 64), generator=gen).to(FP16).to(DEVICE)
    kf, vf = k.float() * K_SCALE, v.float() * V_SCALE
    for s, (c, n) in enumerate(zip(ctx, new)):
        a = int(cu_t[s])
        for i, pos in enumerate(range(c, c + n)):
            blk, off = int(bt[s, pos // bs]), pos % bs
            kf[blk, off], vf[blk, off] = kn[a + i].float(), vn[a + i].float()
            k[blk, off], v[blk, off] = float("nan"), float("nan")
    expect = ref.ref_paged_prefill(q, kf, vf, bt, cu_t, ctx_t, scale, sliding_window=window)
    w = window or 0
    first_live = _free_blocks_before(k, v, bt, lens, [c - w + 1 for c in ctx]) if w else [0] * len(ctx)
    for max_ctx in (None, max(ctx)):
        out = torch.full_like(q, float("nan"))

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
                k_scale=K_SCALE,
                v_scale=V_SCALE,
            )

        _checked(call, bt, first_live)
        assert_close(out, expect, FP16, f"fp8 new K/V W={window} max_context_len={max_ctx}")


def test_decode_fp8_equals_last_prefill_row():
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0, 0], [23, 50], 2, 2, 64, 16, FP16, seed=8)
    last = cu_t[1:].long() - 1
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    for window in (None, 9):
        kw = dict(sliding_window=window, k_scale=K_SCALE, v_scale=V_SCALE)
        p = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, **kw)
        d = decode.paged_decode_attention(q[last], k, v, bt, sl, scale, **kw)
        assert_close(d, p[last].double(), FP16, f"W={window}")


def _hopper() -> bool:
    from kernels.attention import prefill_hopper

    return CUDA and prefill_hopper.gluon is not None and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the Gluon prefill route exists on the GPU only")
def test_fp8_new_kv_prefill_routes_to_triton(monkeypatch):
    """With new K/V, fp8 caches never reach the Gluon kernel's mixed or contiguous forms (bf16/fp16 caches only),
    whatever the config asks, in bf16 with head size 128 (the Gluon kernel's own shapes), pure and chunked."""
    from kernels.attention import prefill_hopper

    def refuse(*a, **kw):
        raise AssertionError("fp8 prefill with new K/V reached the Gluon kernel")

    for name in ("prefill_wgmma_mixed_attention", "prefill_wgmma_attention"):
        monkeypatch.setattr(prefill_hopper, name, refuse)
    kw = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    for ctx, seed in (([0, 0], 10), ([0, 70], 9)):
        new = [128, 64]
        lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, 4, 2, 128, 16, torch.bfloat16, seed)
        kd, vd = (k.float() * K_SCALE).to(torch.bfloat16), (v.float() * V_SCALE).to(torch.bfloat16)
        kn = torch.cat([ref.gather_kv_range(kd, bt[s], c, c + n) for s, (c, n) in enumerate(zip(ctx, new))])
        vn = torch.cat([ref.gather_kv_range(vd, bt[s], c, c + n) for s, (c, n) in enumerate(zip(ctx, new))])
        expect = ref.ref_paged_prefill(q, kd, vd, bt, cu_t, ctx_t, scale)
        for config in (None, {"wgmma": True}):
            got = dispatch.paged_prefill_attention(
                q, k, v, bt, cu_t, ctx_t, scale, config=config, new_key=kn.contiguous(), new_value=vn.contiguous(),
                max_context_len=max(ctx), **kw,
            )  # fmt: skip
            assert_close(got, expect, torch.bfloat16, f"new K/V ctx={ctx} config={config}")


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel needs a compute-capability-9 GPU")
@pytest.mark.parametrize("block_size", [16, 32, 128])
@pytest.mark.parametrize("window", [None, 1, 50, 129, 700])
def test_fp8_paged_prefill_on_gluon(monkeypatch, block_size, window):
    """fp8 caches on the Gluon kernel's paged form (its converter warps): contexts of 0 to 1,000 tokens, chunks of 1
    to 300 (several 128-row work items, the last one partial), with and without a window; freed blocks before each
    window are NaN, so a read of one would show. Against the reference on the dequantized caches."""
    from kernels.attention import prefill_hopper

    calls = []
    real = prefill_hopper.prefill_wgmma_paged_attention

    def counting(*a, **kw):
        calls.append(kw.get("k_scale"))
        return real(*a, **kw)

    monkeypatch.setattr(prefill_hopper, "prefill_wgmma_paged_attention", counting)
    ctx, new = [0, 300, 1000, 37, 129], [300, 200, 130, 1, 64]
    seed = block_size + (window or 0)
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, 4, 2, 128, block_size, torch.bfloat16, seed)
    kw = dict(sliding_window=window, k_scale=K_SCALE, v_scale=V_SCALE)
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, **kw)
    w = window or 0
    if w:
        _free_blocks_before(k, v, bt, lens, [c - w + 1 for c in ctx])
    out = torch.full_like(q, float("nan"))
    # asked for, so that the test still runs this kernel if the default changes
    dispatch.paged_prefill_attention(
        q, k, v, bt, cu_t, ctx_t, scale, out=out, max_query_len=max(new), config={"wgmma": True}, **kw
    )
    assert_close(out, expect, torch.bfloat16, f"fp8 on Gluon W={window} block {block_size}")
    assert calls == [K_SCALE], calls


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel needs a compute-capability-9 GPU")
@pytest.mark.parametrize("config", [{"wgmma": True}, {"wgmma": {"persistent": False}}, {"wgmma": {"pingpong": False}}])
def test_fp8_paged_prefill_on_gluon_forms(config):
    """Head size 64 and MHA, fp16 q, and the grid and turn-taking options, with a window."""
    for group, head, dtype in ((1, 64, torch.float16), (8, 128, torch.bfloat16)):
        ctx, new = [0, 500, 260], [257, 128, 3]
        lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(ctx, new, group, 2, head, 16, dtype, group)
        kw = dict(sliding_window=200, k_scale=K_SCALE, v_scale=V_SCALE)
        expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, **kw)
        _free_blocks_before(k, v, bt, lens, [c - 200 + 1 for c in ctx])
        got = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, config=config, **kw)
        assert_close(got, expect, dtype, f"group {group} head {head} config={config}")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="NaN codes: the interpreter reads 0x7F as 480")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("config", [{"wgmma": False}, {"wgmma": True}], ids=["triton", "gluon"])
def test_fp8_prefill_reads_every_code_exactly(dtype, config):
    """Each of the 256 e4m3fn bytes read as its exact value (NaN as NaN), by the Triton kernel and the Gluon
    kernel's converters (with bf16 q, through its fp16 products). Key 0 of each sequence is 8 in every dimension and
    every other key 0, and q is 8 everywhere, so key 0's score is 8 * 8 * 128 / sqrt(128) = 724 against 0:
    exp(-724) is 0 in fp32, P is one-hot and every output row is key 0's V row times v_scale (a power of two, so
    exact). Sequence 0's V row holds bytes 0..127, sequence 1's bytes 128..255, one per dimension."""
    if config["wgmma"] and not _hopper():
        pytest.skip("the Gluon kernel needs a compute-capability-9 GPU")
    head, bs, new = 128, 16, 160  # two 128-row work items per sequence, the second partial
    k = torch.zeros((2 * new // bs + 1, bs, 1, head), dtype=torch.uint8)
    v = torch.zeros_like(k)
    bt = torch.arange(2 * new // bs, dtype=torch.int32).view(2, new // bs)
    codes = torch.arange(256, dtype=torch.uint8).view(2, head)
    for s in range(2):
        first = int(bt[s, 0])
        k[first, 0, 0] = 0x50  # 8.0: exponent 10 - 7 = 3, mantissa 0
        v[first, 0, 0] = codes[s]
    k, v = k.view(F8).to(DEVICE), v.view(F8).to(DEVICE)
    q = torch.full((2 * new, 1, head), 8.0, dtype=dtype, device=DEVICE)
    cu = torch.tensor([0, new, 2 * new], dtype=torch.int32, device=DEVICE)
    ctx = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    got = dispatch.paged_prefill_attention(
        q, k, v, bt.to(DEVICE), cu, ctx, head**-0.5, max_query_len=new, config=config, k_scale=1.0, v_scale=0.5
    )
    row = codes.view(F8).float() * 0.5  # torch's e4m3fn -> float32: 0x7F and 0xFF are NaN
    expect = row.repeat_interleave(new, dim=0).view(2 * new, 1, head).to(dtype)
    torch.testing.assert_close(got.cpu(), expect, rtol=0, atol=0, equal_nan=True)
    assert int(torch.isnan(expect).sum()) == 2 * new  # the two NaN codes in every row


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the Gluon prefill route exists on the GPU only")
def test_fp8_paged_prefill_default_route(monkeypatch):
    """By default (``WGMMA_FP8_PREFILL_DEFAULT``) fp8 paged prefill runs the Gluon kernel's paged form on Hopper and
    the Triton kernel elsewhere; ``config={"wgmma": False}`` and the switch turned off keep the Triton kernel."""
    from kernels.attention import prefill_hopper

    calls = []
    real = prefill_hopper.prefill_wgmma_paged_attention

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(prefill_hopper, "prefill_wgmma_paged_attention", counting)
    lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0, 70], [128, 64], 4, 2, 128, 16, torch.bfloat16, 11)
    kw = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale, **kw)
    got = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, **kw)
    assert_close(got, expect, torch.bfloat16, "default route")
    assert calls == ([1] if _hopper() else []), calls
    got = dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, config={"wgmma": False}, **kw)
    assert_close(got, expect, torch.bfloat16, "Triton route")
    monkeypatch.setattr(dispatch, "WGMMA_FP8_PREFILL_DEFAULT", False)
    dispatch.paged_prefill_attention(q, k, v, bt, cu_t, ctx_t, scale, **kw)
    assert calls == ([1] if _hopper() else []), calls
