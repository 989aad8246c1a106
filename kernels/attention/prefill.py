"""Triton prefill attention: new tokens of several sequences attend causally to themselves and their context.

Long file: hot loops. Two prefill kernels and the online-softmax steps both inline (deliberate copies, one per
kernel, so that each stays one compiled loop) belong together.

Two kernels, launched by :mod:`kernels.attention.dispatch` (``paged_prefill_attention``) when the Gluon kernel of
:mod:`kernels.attention.prefill_hopper` does not take the call:

* :func:`paged_launch` (``_prefill_kernel``): every key, the new tokens' included, read through the block table;
* :func:`newkv_launch` (``_prefill_newkv_kernel``): the context through the block table, the new tokens' K/V from
  contiguous ``[T, num_kv_heads, head_size]`` tensors (TMA tiles on the GPU).

Key tiles wholly below the diagonal run without masks; only the diagonal tiles are masked. Default tile shapes and
the options' constexprs come from :mod:`kernels.attention.prefill_plan`.

Sliding window (``SLIDING``, a constexpr: without it the kernels compile exactly as before): a query at position ``p``
sees keys ``p - window < k <= p``. The key loops start at the tile holding the first key of the tile's first row's
window; nothing below that key is loaded, block-table entries included (a sliding-window cache frees those blocks).
The paged kernel masks only the tiles that cut some row's window edge; the new-K/V kernel masks every tile.

fp8 KV (``float8_e4m3fn`` caches, the ``KV_FP8`` constexpr; without it the kernels compile as before, apart from unused
scale arguments): q, the output and the new-K/V kernel's ``new_key``/``new_value`` stay fp16/bf16 (fp32 too); only
cache reads are fp8. The paged kernel converts its tiles to q's dtype (exact) with ``k_scale`` folded into the softmax
scale on the host and ``v_scale`` applied to the output rows. The new-K/V kernel mixes dequantized context keys with
unscaled new ones, so its context tiles are dequantized as loaded: ``(tile * scale).to(q's dtype)``.

This file is longer than the package's others because it holds two kernels and their shared online-softmax steps
(the new-K/V kernel alone is about 230 lines: context loop, unmasked and software-pipelined new-key loops and the
diagonal tile); splitting them would separate each kernel from the steps it inlines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention.common import LOG2E, dot_precision, tma_desc, tma_view_ok
from kernels.attention.prefill_plan import lazy_tau, pos_scale, prefill_config, prefill_newkv_config, shape_override


@triton.jit
def _attend_tile(
    q,
    k,
    v,
    m_i,
    l_i,
    acc,
    scale_log2,
    visible,
    MASKED: tl.constexpr,
    POS_SCALE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    LAZY_TAU: tl.constexpr = 0.0,
):
    """One online-softmax step of a prefill tile: ``q [M, D]`` against ``k, v [N, D]``.

    ``m_i`` is the running row maximum in log2 units (scaled), ``l_i`` the running sum and ``acc``
    the unnormalised output. ``visible [M, N]`` masks keys when ``MASKED``. With ``POS_SCALE``
    (scale > 0, the usual case) the row maximum is taken on the unscaled scores and the scale is
    folded into one multiply-add per score, ``exp2(s * scale_log2 - m)``, instead of a multiply
    and a subtract. ``POS_SCALE == 2`` (config ``exp16``, 16-bit ``v`` only, GPU only) also rounds the exponent
    to ``v``'s dtype and takes exp2 of two scores per instruction (``ex2.approx`` on packed bf16x2/f16x2), so the
    special-function unit does half the work; P is rounded to that dtype for the P.V product anyway.
    """
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    if LAZY_TAU > 0.0 and not MASKED and POS_SCALE == 1:
        m_i, l_i, acc = _attend_tile_lazy(s, v, m_i, l_i, acc, scale_log2, LAZY_TAU, DOT_PREC)
    else:
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, scale_log2, visible, MASKED, POS_SCALE, DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _softmax_step(
    s, v, m_i, l_i, acc, scale_log2, visible, MASKED: tl.constexpr, POS_SCALE: tl.constexpr, DOT_PREC: tl.constexpr
):
    """``_attend_tile`` after the score dot ``s [M, N]``: the row maximum, exp2, rescale and the P.V dot."""
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    if POS_SCALE == 2:
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2)
        p = _exp2_packed((s * scale_log2 - m_new[:, None]).to(v.dtype))
        p_sum = tl.sum(p.to(tl.float32), axis=1)
    elif POS_SCALE:
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2)
        p = tl.exp2(s * scale_log2 - m_new[:, None])
        p_sum = tl.sum(p, axis=1)
    else:
        s = s * scale_log2
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        p_sum = tl.sum(p, axis=1)
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + p_sum
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def _attend_tile_lazy(s, v, m_i, l_i, acc, scale_log2, LAZY_TAU: tl.constexpr, DOT_PREC: tl.constexpr):
    """``_attend_tile``'s unmasked step with a lazy rescale (config ``lazy_rescale``): the running maximum
    ``m_i``, and with it ``acc`` and ``l_i``, is moved only when some row's tile maximum exceeds it by more than
    ``LAZY_TAU`` (log2 units); otherwise the stale maximum is kept, so ``p <= 2**LAZY_TAU`` (no overflow in fp32,
    and bf16/fp16 hold it) and the ``[M, D]`` multiply of ``acc`` is skipped. ``acc / l_i`` is the same either
    way, because ``acc`` and ``l_i`` always share one reference maximum. Once the maximum has settled (most tiles
    of a long row) a step is the two dots, one exp2 per score and the row sums.
    """
    m_tile = tl.max(s, axis=1) * scale_log2
    if tl.max(m_tile - m_i, axis=0) > LAZY_TAU:
        m_new = tl.maximum(m_i, m_tile)
        alpha = tl.exp2(m_i - m_new)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha
        m_i = m_new
    p = tl.exp2(s * scale_log2 - m_i[:, None])
    l_i = l_i + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _exp2_packed(x):
    """exp2 of a bf16 or fp16 tensor, two elements per ``ex2.approx`` instruction (inline PTX: GPU only)."""
    if x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x], dtype=tl.bfloat16, is_pure=True, pack=2
        )
    else:
        return tl.inline_asm_elementwise(
            "ex2.approx.f16x2 $0, $1;", "=r,r", [x], dtype=tl.float16, is_pure=True, pack=2
        )


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    cu_q_ptr,
    ctx_ptr,
    out_ptr,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bts,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
    POS_SCALE: tl.constexpr,
    LAZY_TAU: tl.constexpr,
    SLIDING: tl.constexpr = False,
    v_scale=1.0,
    KV_FP8: tl.constexpr = False,
):
    mt = tl.program_id(0)
    qh = tl.program_id(1)
    seq = tl.program_id(2)
    seq64 = seq.to(tl.int64)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    m0 = mt * BLOCK_M
    if m0 >= q_len:
        return
    ctx = tl.load(ctx_ptr + seq)
    seq_len = ctx + q_len
    kvh = qh // GROUP

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_PAD)
    m_mask = offs_m < q_len
    if HEAD == HEAD_PAD:
        d_mask = offs_d < HEAD_PAD  # all true; folded away
    else:
        d_mask = offs_d < HEAD
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + qh * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    q_pos = ctx + offs_m

    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    bt_row = bt_ptr + seq64 * stride_bts

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)

    # keys every row of this tile sees: positions <= ctx + m0 (all < seq_len)
    full_end = ((ctx + m0 + 1) // BLOCK_N) * BLOCK_N
    if SLIDING:
        # Row m sees keys > ctx + m - window. Keys below lo (the first row's window) are seen by no row: the loop
        # starts at lo's tile, and nothing below lo is loaded, block-table entries included. Tiles from n_mid on
        # are inside every row's window (no masks); those before it are masked, row by row.
        lo = tl.maximum(ctx + m0 - window + 1, 0)
        n_lo = (lo // BLOCK_N) * BLOCK_N
        n_mid = tl.cdiv(tl.maximum(ctx + m0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        n_mid = tl.minimum(tl.maximum(n_mid, n_lo), full_end)
        for n0 in range(n_lo, n_mid, BLOCK_N):
            offs = n0 + offs_n
            n_mask = offs >= lo
            blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            in_blk = (offs % BLOCK_SIZE).to(tl.int64)
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(
                k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            v = tl.load(
                v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if KV_FP8:  # exact; k_scale is in scale_log2, v_scale applied to the output
                k = k.to(q.dtype)
                v = v.to(q.dtype)
            visible = offs[None, :] > (q_pos[:, None] - window)
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                visible,
                MASKED=True,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )
        n_first = n_mid  # n_lo <= n_mid <= full_end, as lo <= ctx + m0
    else:
        n_first = 0
    for n0 in range(n_first, full_end, BLOCK_N):
        offs = n0 + offs_n
        blk = tl.load(bt_row + offs // BLOCK_SIZE).to(tl.int64)
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        k = tl.load(
            k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0
        )
        v = tl.load(
            v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0
        )
        if KV_FP8:
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        m_i, l_i, acc = _attend_tile(
            q,
            k,
            v,
            m_i,
            l_i,
            acc,
            scale_log2,
            None,
            MASKED=False,
            POS_SCALE=POS_SCALE,
            DOT_PREC=DOT_PREC,
            LAZY_TAU=LAZY_TAU,
        )

    # the diagonal: causal and length masks (and the window's, which may start inside these tiles)
    diag_end = tl.minimum(seq_len, ctx + m0 + BLOCK_M)
    for n0 in range(full_end, diag_end, BLOCK_N):
        offs = n0 + offs_n
        if SLIDING:
            n_mask = (offs < seq_len) & (offs >= lo)
        else:
            n_mask = offs < seq_len
        blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if KV_FP8:
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        visible = (offs[None, :] <= q_pos[:, None]) & n_mask[None, :]
        if SLIDING:
            visible = visible & (offs[None, :] > (q_pos[:, None] - window))
        m_i, l_i, acc = _attend_tile(
            q,
            k,
            v,
            m_i,
            l_i,
            acc,
            scale_log2,
            visible,
            MASKED=True,
            POS_SCALE=POS_SCALE,
            DOT_PREC=DOT_PREC,
            LAZY_TAU=LAZY_TAU,
        )

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    if KV_FP8:
        o = o * v_scale
    tl.store(
        out_ptr + rows[:, None] * stride_ot + qh * stride_oh + offs_d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _new_rows(
    desc, base, stride_t, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD: tl.constexpr, USE_TMA: tl.constexpr
):
    """Rows ``n0 .. n0 + BLOCK_N - 1`` of one sequence's new K (or V) for KV head ``kvh``: a TMA tile of the 2-D view
    ``[T, heads * D]``, or pointer loads from ``base`` (that head's column of the sequence's first row)."""
    if USE_TMA:
        rows = desc.load([q_start + n0, kvh * HEAD])
    else:
        offs = (n0 + offs_n).to(tl.int64)
        rows = tl.load(base + offs[:, None] * stride_t + offs_d[None, :], mask=d_mask[None, :], other=0.0)
    return rows


@triton.jit
def _prefill_newkv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    cu_q_ptr,
    ctx_ptr,
    out_ptr,
    kn_ptr,
    vn_ptr,
    q_desc,
    kn_desc,
    vn_desc,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bts,
    stride_ot,
    stride_oh,
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
    GROUP: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
    HAS_CTX: tl.constexpr,
    USE_TMA: tl.constexpr,
    WARP_SPEC: tl.constexpr,
    REVERSE_M: tl.constexpr,
    POS_SCALE: tl.constexpr,
    LAZY_TAU: tl.constexpr,
    PIPE_QK: tl.constexpr,
    SLIDING: tl.constexpr = False,
    k_scale=1.0,
    v_scale=1.0,
    KV_FP8: tl.constexpr = False,
):
    """Prefill whose new tokens' K/V come from contiguous ``[T, Hkv, D]`` tensors (rows aligned with q).

    Context keys (positions ``< ctx``) are read through the block table and are visible to every
    row; new key ``j`` is visible to new row ``i`` when ``j <= i``. With ``USE_TMA`` the q, new-K
    and new-V tiles are loaded by the bulk tensor copy engine through host descriptors over the
    2-D views ``[T, heads * D]``; rows past a sequence's end (the next sequence's, or zero fill
    past ``T``) only ever meet masked keys or rows that are not stored.
    """
    if REVERSE_M:  # the longest (last) tiles of the causal triangle start first: a shorter tail
        mt = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        mt = tl.program_id(0)
    qh = tl.program_id(1)
    seq = tl.program_id(2)
    seq64 = seq.to(tl.int64)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    m0 = mt * BLOCK_M
    if m0 >= q_len:
        return
    kvh = qh // GROUP

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_PAD)
    m_mask = offs_m < q_len
    if HEAD == HEAD_PAD:
        d_mask = offs_d < HEAD_PAD  # all true; folded away
    else:
        d_mask = offs_d < HEAD
    rows = (q_start + offs_m).to(tl.int64)
    if USE_TMA:
        q = q_desc.load([q_start + m0, qh * HEAD])
    else:
        q = tl.load(
            q_ptr + rows[:, None] * stride_qt + qh * stride_qh + offs_d[None, :],
            mask=m_mask[:, None] & d_mask[None, :],
            other=0.0,
        )

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)

    if HAS_CTX and SLIDING:
        # Row m (position ctx + m) sees keys > ctx + m - window: the context loop starts at the tile of lo, the first
        # row's window, and nothing below lo is loaded (block-table entries included). Every tile is masked.
        ctx = tl.load(ctx_ptr + seq)
        lo = tl.maximum(ctx + m0 - window + 1, 0)
        k_base = k_ptr + kvh.to(tl.int64) * stride_kh
        v_base = v_ptr + kvh.to(tl.int64) * stride_vh
        bt_row = bt_ptr + seq64 * stride_bts
        for n0 in range((lo // BLOCK_N) * BLOCK_N, ctx, BLOCK_N):
            offs = n0 + offs_n
            n_mask = (offs >= lo) & (offs < ctx)
            blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            in_blk = (offs % BLOCK_SIZE).to(tl.int64)
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(
                k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            v = tl.load(
                v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if KV_FP8:  # context keys dequantized here: the new keys from new_key are not scaled
                k = (k.to(tl.float32) * k_scale).to(q.dtype)
                v = (v.to(tl.float32) * v_scale).to(q.dtype)
            visible = n_mask[None, :] & (offs[None, :] > (ctx + offs_m - window)[:, None])
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                visible,
                MASKED=True,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )
    if HAS_CTX and not SLIDING:
        ctx = tl.load(ctx_ptr + seq)
        k_base = k_ptr + kvh.to(tl.int64) * stride_kh
        v_base = v_ptr + kvh.to(tl.int64) * stride_vh
        bt_row = bt_ptr + seq64 * stride_bts
        full_end = (ctx // BLOCK_N) * BLOCK_N
        for n0 in range(0, full_end, BLOCK_N):  # whole context tiles: no masks
            offs = n0 + offs_n
            blk = tl.load(bt_row + offs // BLOCK_SIZE).to(tl.int64)
            in_blk = (offs % BLOCK_SIZE).to(tl.int64)
            k = tl.load(
                k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :],
                mask=d_mask[None, :],
                other=0.0,
            )
            v = tl.load(
                v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :],
                mask=d_mask[None, :],
                other=0.0,
            )
            if KV_FP8:
                k = (k.to(tl.float32) * k_scale).to(q.dtype)
                v = (v.to(tl.float32) * v_scale).to(q.dtype)
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                None,
                MASKED=False,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )
        for n0 in range(full_end, ctx, BLOCK_N):  # the last, partial context tile
            offs = n0 + offs_n
            n_mask = offs < ctx
            blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            in_blk = (offs % BLOCK_SIZE).to(tl.int64)
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(
                k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            v = tl.load(
                v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if KV_FP8:
                k = (k.to(tl.float32) * k_scale).to(q.dtype)
                v = (v.to(tl.float32) * v_scale).to(q.dtype)
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                n_mask[None, :],
                MASKED=True,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )

    kn_base = kn_ptr + (q_start.to(tl.int64) * stride_knt + kvh.to(tl.int64) * stride_knh)
    vn_base = vn_ptr + (q_start.to(tl.int64) * stride_vnt + kvh.to(tl.int64) * stride_vnh)
    # new keys below the diagonal tile: visible to every row of the tile, no masks
    if SLIDING:
        # from the tile of the first row's window on (new keys counted from the sequence's first new token), masked
        j_lo = tl.maximum(m0 - window + 1, 0)
        for n0 in range((j_lo // BLOCK_N) * BLOCK_N, m0, BLOCK_N):
            offs = n0 + offs_n
            k = _new_rows(kn_desc, kn_base, stride_knt, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
            v = _new_rows(vn_desc, vn_base, stride_vnt, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
            visible = offs[None, :] > (offs_m[:, None] - window)
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                visible,
                MASKED=True,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )
    elif PIPE_QK:
        # Software-pipelined scores: tile j's score dot is issued before tile j - 1's softmax and P.V dot, so
        # the tensor cores work on it while the softmax runs (FlashAttention-3's intra-warpgroup overlap).
        if m0 > 0:
            k = _new_rows(kn_desc, kn_base, stride_knt, q_start, 0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            for n0 in tl.range(BLOCK_N, m0, BLOCK_N):
                k = _new_rows(kn_desc, kn_base, stride_knt, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
                v = _new_rows(
                    vn_desc, vn_base, stride_vnt, q_start, n0 - BLOCK_N, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA
                )
                s_next = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
                m_i, l_i, acc = _softmax_step(
                    s, v, m_i, l_i, acc, scale_log2, None, MASKED=False, POS_SCALE=POS_SCALE, DOT_PREC=DOT_PREC
                )
                s = s_next
            v = _new_rows(
                vn_desc, vn_base, stride_vnt, q_start, m0 - BLOCK_N, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA
            )
            m_i, l_i, acc = _softmax_step(
                s, v, m_i, l_i, acc, scale_log2, None, MASKED=False, POS_SCALE=POS_SCALE, DOT_PREC=DOT_PREC
            )
    else:
        for n0 in tl.range(0, m0, BLOCK_N, warp_specialize=WARP_SPEC):
            k = _new_rows(kn_desc, kn_base, stride_knt, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
            v = _new_rows(vn_desc, vn_base, stride_vnt, q_start, n0, offs_n, offs_d, d_mask, kvh, HEAD, USE_TMA)
            m_i, l_i, acc = _attend_tile(
                q,
                k,
                v,
                m_i,
                l_i,
                acc,
                scale_log2,
                None,
                MASKED=False,
                POS_SCALE=POS_SCALE,
                DOT_PREC=DOT_PREC,
                LAZY_TAU=LAZY_TAU,
            )
    # the diagonal tile: causal (and, for the pointer loads, length) masks
    diag_end = tl.minimum(q_len, m0 + BLOCK_M)
    for n0 in range(m0, diag_end, BLOCK_N):
        offs = n0 + offs_n
        n_mask = offs < q_len
        if USE_TMA:
            k = kn_desc.load([q_start + n0, kvh * HEAD])
            v = vn_desc.load([q_start + n0, kvh * HEAD])
        else:
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(kn_base + offs.to(tl.int64)[:, None] * stride_knt + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(vn_base + offs.to(tl.int64)[:, None] * stride_vnt + offs_d[None, :], mask=kv_mask, other=0.0)
        visible = (offs[None, :] <= offs_m[:, None]) & n_mask[None, :]
        if SLIDING:
            visible = visible & (offs[None, :] > (offs_m[:, None] - window))
        m_i, l_i, acc = _attend_tile(
            q,
            k,
            v,
            m_i,
            l_i,
            acc,
            scale_log2,
            visible,
            MASKED=True,
            POS_SCALE=POS_SCALE,
            DOT_PREC=DOT_PREC,
            LAZY_TAU=LAZY_TAU,
        )

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + rows[:, None] * stride_ot + qh * stride_oh + offs_d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def paged_launch(
    q,
    k_cache,
    v_cache,
    block_tables,
    cu_seqlens_q,
    context_lens,
    scale,
    out,
    max_query_len: int,
    head_pad: int,
    config,
    window: int = 0,
    *,
    kv_fp8: bool = False,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Launch ``_prefill_kernel`` (``paged_prefill_attention``'s contract: every key through the block table) on
    checked arguments; ``config`` overrides :func:`~kernels.attention.prefill_plan.prefill_config`'s tiles.
    ``window > 0``: sliding-window attention over that many keys (the ``SLIDING`` variant of the kernel).
    ``kv_fp8``: float8_e4m3fn caches read as ``cache * k_scale`` / ``cache * v_scale`` (scales checked by the
    caller)."""
    fp8_args = {}
    if kv_fp8:
        scale = float(scale) * float(k_scale)  # (q . k8) * scale * k_scale = q . (k8 * k_scale) * scale
        fp8_args = dict(v_scale=float(v_scale), KV_FP8=True)
    num_q_heads = q.shape[1]
    num_kv_heads = k_cache.shape[2]
    head = q.shape[2]
    num_seqs = context_lens.shape[0]
    # an override of the tile shape applies on top of the 64 x 64 base
    wide_q = 0 if shape_override(config) else int(max_query_len)
    cfg = prefill_config(head_pad, q.dtype, wide_q)
    if config:
        cfg.update(config)
    grid = (triton.cdiv(max_query_len, cfg["block_m"]), num_q_heads, num_seqs)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens_q,
        context_lens,
        out,
        float(scale) * LOG2E,
        int(window),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=num_q_heads // num_kv_heads,
        HEAD=head,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_M=cfg["block_m"],
        BLOCK_N=cfg["block_n"],
        DOT_PREC=dot_precision(q.dtype),
        POS_SCALE=pos_scale(scale, cfg, q.dtype),
        LAZY_TAU=lazy_tau(scale, cfg, q.dtype),
        SLIDING=window > 0,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **fp8_args,
    )


def newkv_launch(
    q,
    k_cache,
    v_cache,
    block_tables,
    cu_seqlens_q,
    context_lens,
    scale,
    out,
    new_key,
    new_value,
    max_query_len: int,
    max_context_len: int | None,
    head_pad: int,
    config,
    window: int = 0,
    *,
    kv_fp8: bool = False,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Launch ``_prefill_newkv_kernel`` on checked arguments (``new_key``/``new_value`` already validated);
    ``config`` overrides :func:`~kernels.attention.prefill_plan.prefill_newkv_config`'s tiles and options.
    ``window > 0``: sliding-window attention over that many keys (the ``SLIDING`` variant, every tile masked).
    ``kv_fp8``: float8_e4m3fn caches (the context) read as ``cache * k_scale`` / ``cache * v_scale``;
    ``new_key``/``new_value`` stay in q's dtype, unscaled."""
    total, num_q_heads, head = q.shape
    num_kv_heads = k_cache.shape[2]
    num_seqs = context_lens.shape[0]
    wide_q = 0 if shape_override(config) else int(max_query_len)  # as in paged_launch
    cfg = prefill_newkv_config(head_pad, q.dtype, wide_q, None if max_context_len is None else int(max_context_len))
    if config:
        cfg.update(config)
    block_m, block_n = int(cfg["block_m"]), int(cfg["block_n"])
    assert block_m % block_n == 0, "block_m must be a multiple of block_n"
    use_tma = (
        bool(cfg["tma"])
        and q.dtype != torch.float32
        and all(tma_view_ok(t, head, head_pad) for t in (q, new_key, new_value))
    )
    if use_tma:
        q_desc = tma_desc(q, block_m, head)
        kn_desc, vn_desc = tma_desc(new_key, block_n, head), tma_desc(new_value, block_n, head)
    else:
        q_desc, kn_desc, vn_desc = q, new_key, new_value  # unused
    grid = (triton.cdiv(max_query_len, block_m), num_q_heads, num_seqs)
    _prefill_newkv_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens_q,
        context_lens,
        out,
        new_key,
        new_value,
        q_desc,
        kn_desc,
        vn_desc,
        float(scale) * LOG2E,
        int(window),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        new_key.stride(0),
        new_key.stride(1),
        new_value.stride(0),
        new_value.stride(1),
        GROUP=num_q_heads // num_kv_heads,
        HEAD=head,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PREC=dot_precision(q.dtype),
        HAS_CTX=max_context_len is None or int(max_context_len) > 0,
        USE_TMA=use_tma,
        WARP_SPEC=bool(cfg["warp_specialize"]),
        REVERSE_M=bool(cfg["reverse_m"]),
        POS_SCALE=pos_scale(scale, cfg, q.dtype),
        LAZY_TAU=lazy_tau(scale, cfg, q.dtype),
        PIPE_QK=bool(cfg.get("pipeline_qk", False)),
        SLIDING=window > 0,
        num_warps=int(cfg["num_warps"]),
        num_stages=int(cfg["num_stages"]),
        **(dict(k_scale=float(k_scale), v_scale=float(v_scale), KV_FP8=True) if kv_fp8 else {}),
    )


__all__ = ["paged_launch", "newkv_launch"]
