"""Decode attention: one query token per sequence, K/V read through a block table or from contiguous ranges.

Long file: a hot loop. The ~270-line split-KV kernel (the decode hot path) belongs with the launch that sets its
constexprs.

Public entry points: :func:`paged_decode_attention` and :func:`contiguous_decode_attention` (the contract is in
``kernels/README.md``). Both go through :func:`decode_launch`, which picks the kernel and its grid
(:mod:`kernels.attention.decode_plan`) and launches either the split-KV (flash-decoding) kernel below, with its
log-sum-exp reduce fused or in a second kernel, or the balanced (stream-K) kernel of
:mod:`kernels.attention.decode_balanced`.

Sliding window (``sliding_window=W``, the ``SLIDING`` constexpr; without it the kernels compile as before): each
sequence's keys start at ``max(0, seq_len - W)`` and the split-KV partitions (and the balanced work list) cut only the
window's keys, so nothing before the window is read, block-table entries included.

fp8 KV (``float8_e4m3fn`` caches, the ``KV_FP8`` constexpr; without it the kernels compile as before, with one unused
``v_scale`` argument): the K/V tiles are loaded as fp8 and converted to q's dtype (exact: every e4m3 value is an fp16
and a bf16 value). ``k_scale`` is folded into the softmax scale on the host (``q . (k * k_scale) = (q . k) * k_scale``)
and ``v_scale`` multiplies each (partial) output row, so the inner loop has no extra multiply.

This file is longer than the package's others because the split-KV kernel (one ``@triton.jit`` function of about
270 lines, with its register-prefetch, fused-reduce and device-side uniform-length variants as constexpr branches)
belongs with the launch that sets those constexprs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention import decode_balanced
from kernels.attention.common import (
    LOG2E,
    combine_partials,
    decode_step,
    dot_precision,
    interpreting,
    load_kv_tile,
    num_sms,
    tile_blocks,
    window_size,
)
from kernels.attention.decode_plan import (
    UNIFORM_FRACTION,
    auto_fused,
    balanced_default,
    decode_config,
    split_plan,
)
from kernels.cache_ops import check_kv_cache

# Split-KV completion counters for the fused reduce, one int32 per (sequence, KV head), cached per
# device. Every counter is 0 between launches: the program that combines a (sequence, head)'s
# partials resets its counter, so no zeroing launch is needed and the call stays graph-capturable.
# Buffers are never freed (a captured graph may hold an older, smaller one).
_COUNTERS: dict = {}
_MIN_COUNTERS = 1 << 16  # 256 KiB: enough for 2,048 sequences x 32 KV heads without growing


def _counters(device: torch.device, n: int) -> torch.Tensor | None:
    """An int32 buffer of at least ``n`` zeroed counters for ``device``, or None while a CUDA graph is
    being captured and the cached buffer is too small (allocating and zeroing then would be captured)."""
    key = (device.type, device.index)
    bufs = _COUNTERS.setdefault(key, [])
    if bufs and bufs[-1].numel() >= n:
        return bufs[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    size = max(_MIN_COUNTERS, triton.next_power_of_2(n))
    buf = torch.zeros(size, dtype=torch.int32, device=device)
    bufs.append(buf)
    return buf


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    lens_ptr,
    starts_ptr,
    out_ptr,
    po_ptr,
    plse_ptr,
    cnt_ptr,
    scale_log2,
    partition_size,
    uniform_partition,
    uniform_frac,
    num_seqs,
    bt_tokens,
    window,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bts,
    stride_os,
    stride_oh,
    stride_pos,
    stride_poh,
    stride_pop,
    stride_pls,
    stride_plh,
    stride_cnt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr,
    SPLIT: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    HEAD_MAJOR: tl.constexpr,
    EVICT: tl.constexpr,
    FUSED: tl.constexpr,
    GROUP_R: tl.constexpr,
    CHUNK: tl.constexpr,
    REV_PARTS: tl.constexpr,
    HP: tl.constexpr,
    PREFETCH: tl.constexpr,
    AUTO_UNIFORM: tl.constexpr,
    NSEQ_PAD: tl.constexpr,
    EARLY_BT: tl.constexpr,
    SLIDING: tl.constexpr = False,
    v_scale=1.0,
    KV_FP8: tl.constexpr = False,
):
    # A program serves HP adjacent KV heads (kvg = head group). With HP > 1 the q rows of all HP heads
    # share one tensor-core tile: q is block-diagonal over [HP * HEAD_PAD] columns (row r holds q head
    # kvh0 * GROUP + r in the columns of its KV head r // GROUP, zeros elsewhere), so one dot scores a
    # token against all HP heads, and each token's HP heads are read as one contiguous run.
    if HEAD_MAJOR:  # consecutive programs read the same blocks (all KV heads of one token range)
        kvg = tl.program_id(0)
        seq = tl.program_id(1)
    else:
        seq = tl.program_id(0)
        kvg = tl.program_id(1)
    if REV_PARTS:  # the last partitions (only long sequences of a mixed batch have them) start first
        part = tl.num_programs(2) - 1 - tl.program_id(2)
    else:
        part = tl.program_id(2)
    kvh = kvg * HP
    seq64 = seq.to(tl.int64)

    seq_len = tl.load(lens_ptr + seq)
    if AUTO_UNIFORM:
        partition_size = _partition_on_device(
            lens_ptr, num_seqs, partition_size, uniform_partition, uniform_frac, NSEQ_PAD, window, SLIDING
        )
    if SLIDING:
        # the query (position seq_len - 1) sees the last `window` keys: the partitions cut that range only, so no
        # program reads a key, or a block-table entry, before it
        lo = tl.maximum(seq_len - window, 0)
        start = lo + part * partition_size
    else:
        start = part * partition_size

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HP * HEAD_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    qh = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP * HP
    if HP == 1:
        dim = offs_d
        col_k = offs_d  # column offsets within a token's K and V rows, from KV head kvh
        col_v = offs_d
        q_mask = g_mask[:, None]
    else:
        dim = offs_d % HEAD_PAD
        col_k = (offs_d // HEAD_PAD).to(tl.int64) * stride_kh + dim
        col_v = (offs_d // HEAD_PAD).to(tl.int64) * stride_vh + dim
        q_mask = g_mask[:, None] & ((offs_d // HEAD_PAD)[None, :] == (offs_g // GROUP)[:, None])
    if HEAD != HEAD_PAD:
        q_mask = q_mask & (dim < HEAD)[None, :]
    bt_row = bt_ptr + seq64 * stride_bts
    if PREFETCH and PAGED and EARLY_BT and not SLIDING:
        # The first tile's block ids, bounded by the table's width rather than the length: issued before the
        # length arrives (entries past the sequence's end are read but only ever address masked-off loads)
        blk_first = tile_blocks(bt_row, start + offs_n, bt_tokens, BLOCK_SIZE, PAGED)

    if SPLIT:
        if start >= seq_len:
            if FUSED:
                # no reduce kernel writes this row: an empty sequence gets zeros from its first program
                if part == 0:
                    tl.store(
                        out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + dim[None, :],
                        tl.zeros([GROUP_PAD, HP * HEAD_PAD], dtype=out_ptr.dtype.element_ty),
                        mask=q_mask,
                    )
            return
        end = tl.minimum(start + partition_size, seq_len)
    else:
        end = seq_len
    q = tl.load(q_ptr + seq64 * stride_qs + qh[:, None] * stride_qh + dim[None, :], mask=q_mask, other=0.0)

    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    if PAGED:
        seq_start = 0
    else:
        seq_start = tl.load(starts_ptr + seq).to(tl.int64)

    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HP * HEAD_PAD], dtype=tl.float32)

    if PREFETCH:
        # Explicit register prefetch (no Triton pipelining needed): a tile's K/V loads are issued one
        # iteration before the tile is used, and its block-table load one iteration before that, so no
        # load address waits on a load issued in the same iteration.
        if PAGED and EARLY_BT and not SLIDING:
            blk = blk_first
        else:
            blk = tile_blocks(bt_row, start + offs_n, end, BLOCK_SIZE, PAGED)
        k_nx, v_nx = load_kv_tile(
            k_base,
            v_base,
            blk,
            start + offs_n,
            end,
            seq_start,
            stride_kb,
            stride_kt,
            stride_vb,
            stride_vt,
            col_k,
            col_v,
            dim,
            BLOCK_SIZE,
            PAGED,
            HEAD,
            HEAD_PAD,
            EVICT,
        )
        blk = tile_blocks(bt_row, start + BLOCK_N + offs_n, end, BLOCK_SIZE, PAGED)
        for n0 in range(start, end, BLOCK_N):
            k = k_nx
            v = v_nx
            nxt = n0 + BLOCK_N + offs_n
            k_nx, v_nx = load_kv_tile(
                k_base,
                v_base,
                blk,
                nxt,
                end,
                seq_start,
                stride_kb,
                stride_kt,
                stride_vb,
                stride_vt,
                col_k,
                col_v,
                dim,
                BLOCK_SIZE,
                PAGED,
                HEAD,
                HEAD_PAD,
                EVICT,
            )
            blk = tile_blocks(bt_row, nxt + BLOCK_N, end, BLOCK_SIZE, PAGED)
            if KV_FP8:  # exact conversion; k_scale is in scale_log2 and v_scale is applied to the output
                k = k.to(q_ptr.dtype.element_ty)
                v = v.to(q_ptr.dtype.element_ty)
            m_i, l_i, acc = decode_step(q, k, v, (n0 + offs_n) < end, m_i, l_i, acc, scale_log2, USE_DOT, DOT_PREC)
    else:
        for n0 in range(start, end, BLOCK_N):
            offs = n0 + offs_n
            blk = tile_blocks(bt_row, offs, end, BLOCK_SIZE, PAGED)
            k, v = load_kv_tile(
                k_base,
                v_base,
                blk,
                offs,
                end,
                seq_start,
                stride_kb,
                stride_kt,
                stride_vb,
                stride_vt,
                col_k,
                col_v,
                dim,
                BLOCK_SIZE,
                PAGED,
                HEAD,
                HEAD_PAD,
                EVICT,
            )
            if KV_FP8:
                k = k.to(q_ptr.dtype.element_ty)
                v = v.to(q_ptr.dtype.element_ty)
            m_i, l_i, acc = decode_step(q, k, v, offs < end, m_i, l_i, acc, scale_log2, USE_DOT, DOT_PREC)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    if KV_FP8:  # the partials too: the log-sum-exp combine is linear in them
        o = o * v_scale
    o_mask = q_mask  # with HP > 1 only the block-diagonal part of acc is this program's output
    optr = out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + dim[None, :]
    if SPLIT:
        if SLIDING:
            n_parts = tl.cdiv(seq_len - lo, partition_size)
        else:
            n_parts = tl.cdiv(seq_len, partition_size)
        po = po_ptr + seq64 * stride_pos + qh[:, None] * stride_poh + part * stride_pop + dim[None, :]
        lse_ptr = plse_ptr + seq64 * stride_pls + qh * stride_plh + part
        if FUSED:
            if n_parts == 1:
                # a short sequence of a mixed batch: its only program writes the output directly
                tl.store(optr, o.to(out_ptr.dtype.element_ty), mask=o_mask)
            else:
                tl.store(po, o, mask=o_mask)
                tl.store(lse_ptr, tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf")), mask=g_mask)
                # The last of this (sequence, KV head)'s programs to finish combines the partials, so no
                # second launch is needed. The barrier puts every thread's partial stores before the
                # (single-thread) release of the counter increment; acq_rel makes the other programs'
                # partials visible to the one that sees the count reach n_parts - 1.
                tl.debug_barrier()
                cnt = cnt_ptr + seq64 * stride_cnt + kvg
                done = tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu")
                if done == n_parts - 1:
                    # every other program of this (sequence, head group) has incremented: reset for the
                    # next call; the group's GROUP * HP q heads are adjacent, so combine them as one group
                    tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")
                    combine_partials(
                        po_ptr,
                        plse_ptr,
                        out_ptr,
                        seq64,
                        kvg,
                        n_parts,
                        stride_pos,
                        stride_poh,
                        stride_pop,
                        stride_pls,
                        stride_plh,
                        stride_os,
                        stride_oh,
                        GROUP=GROUP * HP,
                        GROUP_R=GROUP_R,
                        HEAD=HEAD,
                        HEAD_PAD=HEAD_PAD,
                        CHUNK=CHUNK,
                    )
        elif n_parts == 1:  # the reduce kernel skips a sequence of one partition: write its output here
            tl.store(optr, o.to(out_ptr.dtype.element_ty), mask=o_mask)
        else:
            tl.store(po, o, mask=o_mask)
            tl.store(lse_ptr, tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf")), mask=g_mask)
    else:
        tl.store(optr, o.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _partition_on_device(
    lens_ptr,
    num_seqs,
    partition_size,
    uniform_partition,
    uniform_frac,
    NSEQ_PAD: tl.constexpr,
    window=0,
    SLIDING: tl.constexpr = False,
):
    """The partition size (tokens) chosen from the lengths themselves: ``uniform_partition`` when every length is
    at least ``uniform_frac`` of the longest (the device-side form of the ``min_seq_len`` hint), else
    ``partition_size``. Every program of a launch reads the same ``num_seqs`` lengths, so all agree. With
    ``SLIDING`` the lengths are the keys each query sees, at most ``window``."""
    offs = tl.arange(0, NSEQ_PAD)
    valid = offs < num_seqs
    lens = tl.load(lens_ptr + offs, mask=valid, other=0)
    if SLIDING:
        lens = tl.minimum(lens, window)
    longest = tl.max(tl.where(valid, lens, 0), axis=0)
    shortest = tl.min(tl.where(valid, lens, 2147483647), axis=0)
    uniform = shortest.to(tl.float32) >= uniform_frac * longest.to(tl.float32)
    return tl.where(uniform, uniform_partition, partition_size)


@triton.jit
def _reduce_kernel(
    po_ptr,
    plse_ptr,
    lens_ptr,
    out_ptr,
    partition_size,
    uniform_partition,
    uniform_frac,
    num_seqs,
    window,
    stride_pos,
    stride_poh,
    stride_pop,
    stride_pls,
    stride_plh,
    stride_os,
    stride_oh,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    CHUNK: tl.constexpr,
    AUTO_UNIFORM: tl.constexpr,
    NSEQ_PAD: tl.constexpr,
    SLIDING: tl.constexpr = False,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    seq64 = seq.to(tl.int64)
    seq_len = tl.load(lens_ptr + seq)
    if AUTO_UNIFORM:
        partition_size = _partition_on_device(
            lens_ptr, num_seqs, partition_size, uniform_partition, uniform_frac, NSEQ_PAD, window, SLIDING
        )
    if SLIDING:
        n_parts = tl.cdiv(tl.minimum(tl.maximum(seq_len, 0), window), partition_size)
    else:
        n_parts = tl.cdiv(tl.maximum(seq_len, 0), partition_size)
    if n_parts == 1:  # written by the decode kernel
        return
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_PAD)
    lse_base = plse_ptr + seq64 * stride_pls + h * stride_plh

    # one pass with running rescaling: the lse and partial-output loads of a chunk issue together
    m = tl.full([1], -1.0e30, dtype=tl.float32)
    den = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([HEAD_PAD], dtype=tl.float32)
    po_base = po_ptr + seq64 * stride_pos + h * stride_poh
    for c0 in range(0, n_parts, CHUNK):
        c_mask = (c0 + offs_c) < n_parts
        lse = tl.load(lse_base + c0 + offs_c, mask=c_mask, other=float("-inf"))
        o = tl.load(
            po_base + (c0 + offs_c)[:, None] * stride_pop + offs_d[None, :],
            mask=c_mask[:, None] & (offs_d < HEAD)[None, :],
            other=0.0,
        )
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new)
        den = den * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        m = m_new
    out = acc / tl.where(den > 0.0, den, 1.0)
    tl.store(out_ptr + seq64 * stride_os + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD)


def decode_launch(
    q,
    k,
    v,
    block_tables,
    starts,
    seq_lens,
    scale,
    *,
    paged: bool,
    block_size: int,
    max_seq_len,
    num_splits,
    out,
    config,
    min_seq_len=None,
    fused_reduce=None,
    sliding_window=None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
):
    assert q.dim() == 3 and k.shape == v.shape
    kv_fp8 = check_kv_cache(k, v, k_scale, v_scale)
    num_seqs, num_q_heads, head = q.shape
    num_kv_heads = k.shape[-2]
    assert k.shape[-1] == head, "head_size of q and the cache differ"
    assert num_q_heads % num_kv_heads == 0, "num_q_heads must be a multiple of num_kv_heads"
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "cache head_size axis must be contiguous"
    assert seq_lens.dtype == torch.int32 and seq_lens.is_contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    group = num_q_heads // num_kv_heads
    head_pad = max(16, triton.next_power_of_2(head))
    cfg = decode_config(head_pad, group, q.dtype, block_size, num_seqs * num_kv_heads, num_sms(q.device))
    if config:
        cfg.update(config)
    use_dot = bool(cfg["use_dot"])
    hp = int(cfg["heads_per_program"])
    assert hp >= 1 and hp & (hp - 1) == 0 and num_kv_heads % hp == 0, (
        "heads_per_program must be a power of two dividing num_kv_heads"
    )
    num_groups = num_kv_heads // hp  # programs per (sequence, partition)
    rows = group * hp
    group_pad = max(16, triton.next_power_of_2(rows)) if use_dot else triton.next_power_of_2(rows)
    block_n = int(cfg["block_n"])

    if out is None:
        out = torch.empty_like(q)
    else:
        assert out.shape == q.shape and out.stride(-1) == 1
    if num_seqs == 0:
        return out

    if max_seq_len is None:
        if paged:
            max_seq_len = block_tables.shape[1] * block_size
        else:
            max_seq_len = int(seq_lens.max().item())  # one sync; pass max_seq_len to avoid it
    window = window_size(sliding_window)
    if window >= max_seq_len:
        window = 0  # no sequence is longer than the window: full attention, the same kernel as without one
    if window:
        # only the last `window` keys of a sequence are read: plan the splits (and the balanced work list) on them
        max_seq_len = window
        if min_seq_len is not None:
            min_seq_len = min(int(min_seq_len), window)
    if paged:
        assert block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1
        bt, stride_bts = block_tables, block_tables.stride(0)
        bt_tokens = block_tables.shape[1] * block_size  # token positions the table's rows cover
        kst = (k.stride(0), k.stride(1), k.stride(2))
        vst = (v.stride(0), v.stride(1), v.stride(2))
        starts_arg = seq_lens  # unused
    else:
        bt, stride_bts = seq_lens, 0  # unused
        bt_tokens = 0
        kst = (k.stride(0), 0, k.stride(1))
        vst = (v.stride(0), 0, v.stride(1))
        starts_arg = starts
    scale_log2 = float(scale) * LOG2E
    fp8_args = {}
    if kv_fp8:
        scale_log2 *= float(k_scale)  # scores of the raw fp8 keys times k_scale are the scores of the keys
        fp8_args = dict(v_scale=float(v_scale), KV_FP8=True)

    balanced = cfg.get("balanced")
    if balanced is None:
        balanced = fused_reduce is None and balanced_default(
            num_seqs, num_kv_heads, max_seq_len, min_seq_len, num_splits, hp
        )
    if balanced and hp == 1 and num_seqs <= decode_balanced.MAX_SEQS:
        return decode_balanced.balanced_decode_launch(
            q,
            k,
            v,
            bt,
            starts,
            seq_lens,
            scale_log2,
            paged=paged,
            block_size=block_size,
            max_seq_len=max_seq_len,
            out=out,
            cfg=cfg,
            kst=kst,
            vst=vst,
            stride_bts=stride_bts,
            window=window,
            v_scale=float(v_scale),
            kv_fp8=kv_fp8,
        )

    splits, part, auto_uniform, uniform_part = split_plan(
        num_seqs,
        num_groups,
        max_seq_len,
        block_n,
        num_sms(q.device),
        num_splits,
        min_seq_len,
        bool(cfg.get("auto_uniform", True)),
    )
    if splits > 1:
        po = torch.empty((num_seqs, num_q_heads, splits, head), dtype=torch.float32, device=q.device)
        plse = torch.empty((num_seqs, num_q_heads, splits), dtype=torch.float32, device=q.device)
        po_st = po.stride()[:3]
        pl_st = plse.stride()[:2]
    else:
        po, plse = out, out  # unused
        po_st, pl_st = (0, 0, 0), (0, 0)

    if fused_reduce is None:
        # fuse only when the whole grid is one wave of resident programs (see auto_fused)
        fused_reduce = bool(cfg["fuse_always"]) or auto_fused(num_seqs, num_groups, splits, q.device)
    fused = splits > 1 and bool(fused_reduce)
    cnt = None
    if fused:
        cnt = _counters(q.device, num_seqs * num_groups)
        fused = cnt is not None  # capture with too small a cached buffer: the two-kernel path
    if cnt is None:
        cnt = seq_lens  # unused
    group_r = triton.next_power_of_2(rows)
    # partitions combined per step: about 32 (q head, partition) rows of HEAD floats at once
    chunk = max(1, min(triton.next_power_of_2(splits), 32 // group_r))

    launch_opts = {}
    maxnreg = cfg.get("maxnreg")
    if maxnreg and not interpreting():
        launch_opts["maxnreg"] = int(maxnreg)

    head_major = bool(cfg["head_major"])
    nseq_pad = triton.next_power_of_2(num_seqs) if auto_uniform else 1  # lengths each program reads
    grid = (num_groups, num_seqs, splits) if head_major else (num_seqs, num_groups, splits)
    _decode_kernel[grid](
        q,
        k,
        v,
        bt,
        seq_lens,
        starts_arg,
        out,
        po,
        plse,
        cnt,
        scale_log2,
        part,
        uniform_part,
        UNIFORM_FRACTION,
        num_seqs,
        bt_tokens,
        window,
        q.stride(0),
        q.stride(1),
        *kst,
        *vst,
        stride_bts,
        out.stride(0),
        out.stride(1),
        *po_st,
        *pl_st,
        num_groups,
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD=head,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        PAGED=paged,
        SPLIT=splits > 1,
        USE_DOT=use_dot,
        DOT_PREC=dot_precision(q.dtype),
        HEAD_MAJOR=head_major,
        EVICT=str(cfg["evict"]),
        FUSED=fused,
        GROUP_R=group_r,
        CHUNK=chunk,
        REV_PARTS=bool(cfg.get("reverse_parts", False)),
        HP=hp,
        PREFETCH=bool(cfg.get("prefetch", False)),
        EARLY_BT=bool(cfg.get("early_bt", True)),
        AUTO_UNIFORM=auto_uniform,
        NSEQ_PAD=nseq_pad,
        SLIDING=window > 0,
        num_warps=int(cfg["num_warps"]),
        num_stages=int(cfg["num_stages"]),
        **launch_opts,
        **fp8_args,
    )
    if splits > 1 and not fused:
        chunk = min(16, triton.next_power_of_2(splits))
        _reduce_kernel[(num_seqs, num_q_heads)](
            po,
            plse,
            seq_lens,
            out,
            part,
            uniform_part,
            UNIFORM_FRACTION,
            num_seqs,
            window,
            *po_st,
            *pl_st,
            out.stride(0),
            out.stride(1),
            HEAD=head,
            HEAD_PAD=triton.next_power_of_2(head),
            CHUNK=chunk,
            AUTO_UNIFORM=auto_uniform,
            NSEQ_PAD=nseq_pad,
            SLIDING=window > 0,
            num_warps=4,
        )
    return out


def paged_decode_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    scale,
    *,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    config: dict | None = None,
    min_seq_len: int | None = None,
    fused_reduce: bool | None = None,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Decode attention through block tables.

    Args:
        q: ``[num_seqs, num_q_heads, head_size]`` fp16/bf16/fp32.
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``,
            same dtype as ``q``, or both ``float8_e4m3fn`` (fp8 KV: compute capability
            >= 8.9, or the CPU interpreter); the head_size axis must be contiguous (other
            strides are free).
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]``, last axis contiguous.
            Entries past a sequence's last block are never used (the ``prefetch`` option may
            read them, but never addresses the cache with them).
        seq_lens: int32 ``[num_seqs]``, tokens of context per sequence
            (``0`` gives a zero output row).
        scale: softmax scale, usually ``head_size ** -0.5``.
        max_seq_len: an upper bound on ``seq_lens`` used to size the split-KV
            grid; defaults to ``max_blocks_per_seq * block_size`` (no device sync).
        num_splits: force the number of KV splits (``1`` = no split-KV); default
            automatic (see ``choose_partition``).
        out: optional output tensor (same shape as ``q``).
        min_seq_len: optional host hint, a lower bound on ``seq_lens`` in tokens. When it
            is within ``UNIFORM_FRACTION`` of ``max_seq_len`` and the batch fills a wave of
            programs, the 2,048-token partition cap (there to balance mixed lengths) is lifted.
            A wrong hint costs speed, never correctness. Without it the kernel makes the same
            test on the device where it would change the split choice (see ``split_plan``).
            When the hint marks the batch as mixed (below that fraction) and the batch has 16 to
            ``1024 / num_kv_heads`` sequences, the balanced path is taken (``config["balanced"]``).
        fused_reduce: ``True``: combine split-KV partials in the last-finishing program of
            each (sequence, KV head), found with an atomic counter, instead of in a second
            kernel launch (``False``). ``None`` (default): fused when the whole grid fits in
            one wave of resident programs, where it measured faster on the H100. The
            counters are a per-device buffer, so two fused calls on one device must not run
            concurrently on different streams.
        config: tuning overrides: ``block_n`` (tokens per loop step), ``num_warps``,
            ``num_stages``, ``use_dot`` (tensor-core dots, default; ``False`` = CUDA-core
            reductions), ``head_major`` (launch the KV heads of one token range next to
            each other), ``evict`` (``""`` or ``"evict_first"`` for the K/V loads),
            ``heads_per_program`` (KV heads per program, a power of two dividing
            ``num_kv_heads``; default 1), ``prefetch`` (explicit register prefetch of the
            next K/V tile; default on only for tiny grouped-query grids, see
            ``decode_config``), ``early_bt`` (with ``prefetch``: the first tile's block ids
            loaded before the length arrives; default True). ``auto_uniform`` (default True): the
            device-side form of the ``min_seq_len`` test when no hint is given. ``balanced``
            (default: see ``min_seq_len``): the stream-K kernel of :mod:`kernels.attention.decode_balanced`,
            one program per resident slot with equal shares of the KV tiles, which ignores
            ``num_splits`` and ``fused_reduce`` (batches of more than 1,024 sequences keep the split
            path); with it ``programs`` / ``programs_per_sm`` (grid size) and ``maxnreg`` (register
            cap). ``maxnreg`` also caps the split-KV kernel. The measurements behind these defaults
            are in ``reports/kernels/README.md``.
        sliding_window: ``W`` tokens (``None`` or ``0``: full attention). The query, at position
            ``seq_lens[s] - 1``, sees only the keys at positions ``seq_lens[s] - W .. seq_lens[s] - 1``; the
            kernel starts at the first of them (the split-KV partitions cut that range only), so block-table
            entries of blocks wholly before it are never read and may hold a freed block's placeholder.
            ``max_seq_len`` and ``min_seq_len`` still bound the full lengths. A window no shorter than
            ``max_seq_len`` runs the full-attention kernel.
        k_scale, v_scale: per-tensor scales (dimensionless) of fp8 caches: keys are ``k_cache * k_scale``,
            values ``v_cache * v_scale``. Finite and positive for fp8, 1.0 otherwise (``ValueError``).

    Returns:
        ``out`` ``[num_seqs, num_q_heads, head_size]`` in ``q``'s dtype.
    """
    assert k_cache.dim() == 4, "k_cache must be [num_blocks, block_size, num_kv_heads, head_size]"
    return decode_launch(
        q,
        k_cache,
        v_cache,
        block_tables,
        None,
        seq_lens,
        scale,
        paged=True,
        block_size=k_cache.shape[1],
        max_seq_len=max_seq_len,
        num_splits=num_splits,
        out=out,
        config=config,
        min_seq_len=min_seq_len,
        fused_reduce=fused_reduce,
        sliding_window=sliding_window,
        k_scale=k_scale,
        v_scale=v_scale,
    )


def contiguous_decode_attention(
    q,
    k_pool,
    v_pool,
    seq_starts,
    seq_lens,
    scale,
    *,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    config: dict | None = None,
    min_seq_len: int | None = None,
    fused_reduce: bool | None = None,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Decode attention over per-sequence contiguous ranges of one flat pool.

    Args:
        k_pool, v_pool: ``[num_slots, num_kv_heads, head_size]`` (slot = token address).
        seq_starts: int64 ``[num_seqs]``, first slot of each sequence.
        seq_lens: int32 ``[num_seqs]``; sequence ``s`` uses slots
            ``seq_starts[s] .. seq_starts[s] + seq_lens[s] - 1``.
        max_seq_len: upper bound on ``seq_lens``; if omitted it is read from
            the device (one synchronisation).
        min_seq_len, fused_reduce, sliding_window, k_scale, v_scale: as for :func:`paged_decode_attention`
            (with a window, sequence ``s`` reads slots ``seq_starts[s] + max(0, seq_lens[s] - W)`` onwards;
            fp8 pools are ``float8_e4m3fn``).

    Other arguments as :func:`paged_decode_attention`.
    """
    assert k_pool.dim() == 3, "k_pool must be [num_slots, num_kv_heads, head_size]"
    assert seq_starts.dtype == torch.int64
    return decode_launch(
        q,
        k_pool,
        v_pool,
        None,
        seq_starts.contiguous(),
        seq_lens,
        scale,
        paged=False,
        block_size=1,
        max_seq_len=max_seq_len,
        num_splits=num_splits,
        out=out,
        config=config,
        min_seq_len=min_seq_len,
        fused_reduce=fused_reduce,
        sliding_window=sliding_window,
        k_scale=k_scale,
        v_scale=v_scale,
    )


__all__ = ["paged_decode_attention", "contiguous_decode_attention", "decode_launch"]
