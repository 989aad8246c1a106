"""Triton attention kernels that read K/V through block tables.

Public entry points (see ``kernels/README.md`` for the full contract):

* :func:`paged_decode_attention` - one query token per sequence, K/V gathered
  through a block table; grouped-query heads handled together; a split-KV
  (flash-decoding) path with a log-sum-exp reduction for long contexts and
  small batches.
* :func:`contiguous_decode_attention` - the same math over a per-sequence
  contiguous range ``[start, start + len)`` of one flat K/V pool.
* :func:`paged_prefill_attention` - new tokens of several sequences attend
  causally to themselves and to their context already in the paged cache.

All offsets into the caches are computed in 64-bit, so caches of more than
2**31 elements work.  Softmax statistics and accumulators are float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634

# Split-KV heuristic knobs (see _choose_partition); the benchmark sweeps them.
RESIDENT_PROGRAMS_PER_SM = 2
PROGRAM_OVERHEAD_TOKENS = 128  # fixed cost of a program (start, q load, partial store) in tokens read
MIN_PARTITION = 256
MAX_PARTITION = 2048

# Alternatives measured on the H100 in round 3 and rejected (kept for kernels/tune_perf3.py; see
# reports/kernels/README.md):
# * SPLIT_MODEL "per_sm": count programs per SM instead of waves when the (sequence, KV head) pairs
#   are fewer than the SMs (slower on every batch-1 case with the default tiles);
# * FUSED_DEFAULT "always": the fused reduce on every split grid (slower on the large grids);
# * FUSED_MAXNREG 128: cap the fused kernel at 128 registers per thread (its combine code takes it
#   from 128 to 138, so 3 programs are resident per SM instead of 4; the cap fixed that, 0.235 ->
#   0.200 ms on gqa b16 x 8,192, but the cap's spills cost 0.6-1.6% on the large grids).
SPLIT_MODEL = "waves"
FUSED_DEFAULT = "one_wave"
FUSED_MAXNREG = None

# Small-grid decode configs: a grid of at most num_sms / TINY_GRID_FRACTION (sequence, KV head) pairs with
# grouped-query heads takes the register-prefetch config (see _decode_config).
TINY_GRID_FRACTION = 8

# Uniform-length hint (``min_seq_len``): when every sequence is at least this fraction of the longest,
# the MAX_PARTITION cap (which exists to balance mixed lengths) is lifted.
UNIFORM_FRACTION = 0.9
# Without the hint the decode kernel makes the same test on the device (each program reads every length), for
# batches of up to this many sequences.
AUTO_UNIFORM_MAX_SEQS = 1024

# Balanced (stream-K) decode by default for batches the ``min_seq_len`` hint marks as mixed, of at least this many
# sequences and at most this many (sequence, KV head) pairs (see _balanced_default).
BALANCED_MIN_SEQS = 16
BALANCED_MAX_PAIRS = 1024

# Prefill: 128 x 128 tiles with 8 warps once a sequence has this many new tokens (one full 128-row tile), see
# _prefill_config and _prefill_newkv_config. 16-bit dtypes only: in fp32 the 3-stage tiles need 262 KB of shared
# memory, past the H100's 227 KB.
WIDE_PREFILL_MIN_QUERY = 128
_WIDE_DTYPES = (torch.float16, torch.bfloat16)

_SM_COUNT: dict = {}

# Split-KV completion counters for the fused reduce, one int32 per (sequence, KV head), cached per
# device. Every counter is 0 between launches: the program that combines a (sequence, head)'s
# partials resets its counter, so no zeroing launch is needed and the call stays graph-capturable.
# Buffers are never freed (a captured graph may hold an older, smaller one).
_COUNTERS: dict = {}
_MIN_COUNTERS = 1 << 16  # 256 KiB: enough for 2,048 sequences x 32 KV heads without growing


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # behave like an H100 so the CPU tests exercise the same choices
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


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


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------


@triton.jit
def _tile_blocks(bt_row, offs, end, BLOCK_SIZE: tl.constexpr, PAGED: tl.constexpr):
    """Physical block of each token position ``offs`` (int64), read from the block-table row ``bt_row``;
    positions at or past ``end`` read nothing. Unused (returns ``offs``) for the contiguous layout."""
    if PAGED:
        return tl.load(bt_row + offs // BLOCK_SIZE, mask=offs < end, other=0).to(tl.int64)
    else:
        return offs


@triton.jit
def _load_kv_tile(
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
    BLOCK_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    EVICT: tl.constexpr,
):
    """K and V rows of the token positions ``offs`` (zeros at or past ``end``): through the blocks ``blk``
    when paged, else from slot ``seq_start + offs``. ``col_k``/``col_v`` are the column offsets."""
    n_mask = offs < end
    if PAGED:
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        k_off = blk * stride_kb + in_blk * stride_kt
        v_off = blk * stride_vb + in_blk * stride_vt
    else:
        slot = seq_start + offs.to(tl.int64)
        k_off = slot * stride_kb
        v_off = slot * stride_vb
    if HEAD == HEAD_PAD:
        kv_mask = n_mask[:, None]
    else:
        kv_mask = n_mask[:, None] & (dim < HEAD)[None, :]
    k = tl.load(k_base + k_off[:, None] + col_k[None, :], mask=kv_mask, other=0.0, eviction_policy=EVICT)
    v = tl.load(v_base + v_off[:, None] + col_v[None, :], mask=kv_mask, other=0.0, eviction_policy=EVICT)
    return k, v


@triton.jit
def _decode_step(q, k, v, n_mask, m_i, l_i, acc, scale_log2, USE_DOT: tl.constexpr, DOT_PREC: tl.constexpr):
    """One online-softmax step of decode: the q rows against one tile of keys ``k``/``v`` (``n_mask``:
    keys that exist). Returns the new running maximum (log2 units), sum and unnormalised output."""
    if USE_DOT:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    else:
        s = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), axis=2)
    s = s * scale_log2
    s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if USE_DOT:
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    else:
        pv = tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
    return m_new, l_i, acc * alpha[:, None] + pv


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
            lens_ptr, num_seqs, partition_size, uniform_partition, uniform_frac, NSEQ_PAD
        )
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
    if PREFETCH and PAGED and EARLY_BT:
        # The first tile's block ids, bounded by the table's width rather than the length: issued before the
        # length arrives (entries past the sequence's end are read but only ever address masked-off loads)
        blk_first = _tile_blocks(bt_row, start + offs_n, bt_tokens, BLOCK_SIZE, PAGED)

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
        if PAGED and EARLY_BT:
            blk = blk_first
        else:
            blk = _tile_blocks(bt_row, start + offs_n, end, BLOCK_SIZE, PAGED)
        k_nx, v_nx = _load_kv_tile(
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
        blk = _tile_blocks(bt_row, start + BLOCK_N + offs_n, end, BLOCK_SIZE, PAGED)
        for n0 in range(start, end, BLOCK_N):
            k = k_nx
            v = v_nx
            nxt = n0 + BLOCK_N + offs_n
            k_nx, v_nx = _load_kv_tile(
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
            blk = _tile_blocks(bt_row, nxt + BLOCK_N, end, BLOCK_SIZE, PAGED)
            m_i, l_i, acc = _decode_step(q, k, v, (n0 + offs_n) < end, m_i, l_i, acc, scale_log2, USE_DOT, DOT_PREC)
    else:
        for n0 in range(start, end, BLOCK_N):
            offs = n0 + offs_n
            blk = _tile_blocks(bt_row, offs, end, BLOCK_SIZE, PAGED)
            k, v = _load_kv_tile(
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
            m_i, l_i, acc = _decode_step(q, k, v, offs < end, m_i, l_i, acc, scale_log2, USE_DOT, DOT_PREC)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    o_mask = q_mask  # with HP > 1 only the block-diagonal part of acc is this program's output
    optr = out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + dim[None, :]
    if SPLIT:
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
                    _combine_partials(
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
def _combine_partials(
    po_ptr,
    plse_ptr,
    out_ptr,
    seq64,
    kvh,
    n_parts,
    stride_pos,
    stride_poh,
    stride_pop,
    stride_pls,
    stride_plh,
    stride_os,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_R: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Log-sum-exp combine of ``n_parts`` partial outputs for the ``GROUP`` q heads of KV head ``kvh``.

    ``GROUP_R`` is ``GROUP`` rounded up to a power of two (no tensor-core padding here). Chunks of
    ``CHUNK`` partitions are loaded at once (independent loads in flight) and folded in with running
    rescaling. Loads bypass L1 (``.cg``): the partials were written by other SMs.
    """
    offs_g = tl.arange(0, GROUP_R)
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_PAD)
    qh = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD
    m = tl.full([GROUP_R], -1.0e30, dtype=tl.float32)
    den = tl.zeros([GROUP_R], dtype=tl.float32)
    acc = tl.zeros([GROUP_R, HEAD_PAD], dtype=tl.float32)
    lse_base = plse_ptr + seq64 * stride_pls + qh[:, None] * stride_plh
    po_base = po_ptr + seq64 * stride_pos + qh[:, None, None] * stride_poh + offs_d[None, None, :]
    for c0 in range(0, n_parts, CHUNK):
        c = c0 + offs_c
        gc_mask = g_mask[:, None] & (c < n_parts)[None, :]
        lse = tl.load(lse_base + c[None, :], mask=gc_mask, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(
            po_base + c[None, :, None] * stride_pop,
            mask=gc_mask[:, :, None] & d_mask[None, None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m, tl.max(lse, axis=1))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new[:, None])
        den = den * alpha + tl.sum(w, axis=1)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, axis=1)
        m = m_new
    res = acc / tl.where(den > 0.0, den, 1.0)[:, None]
    tl.store(
        out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + offs_d[None, :],
        res.to(out_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _partition_on_device(lens_ptr, num_seqs, partition_size, uniform_partition, uniform_frac, NSEQ_PAD: tl.constexpr):
    """The partition size (tokens) chosen from the lengths themselves: ``uniform_partition`` when every length is
    at least ``uniform_frac`` of the longest (the device-side form of the ``min_seq_len`` hint), else
    ``partition_size``. Every program of a launch reads the same ``num_seqs`` lengths, so all agree."""
    offs = tl.arange(0, NSEQ_PAD)
    valid = offs < num_seqs
    lens = tl.load(lens_ptr + offs, mask=valid, other=0)
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
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    seq64 = seq.to(tl.int64)
    seq_len = tl.load(lens_ptr + seq)
    if AUTO_UNIFORM:
        partition_size = _partition_on_device(
            lens_ptr, num_seqs, partition_size, uniform_partition, uniform_frac, NSEQ_PAD
        )
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


def _partition_for(max_len: int, splits: int, block_n: int) -> tuple[int, int]:
    part = -(-max_len // splits)
    part = -(-part // block_n) * block_n
    return -(-max_len // part), part


def _choose_partition(
    num_seqs: int,
    num_kv_heads: int,
    max_len: int,
    block_n: int,
    num_sms: int,
    num_splits: int | None,
    min_len: int | None = None,
) -> tuple[int, int]:
    """Return ``(num_splits, partition_size)``; ``num_splits == 1`` means no split-KV.

    Automatic choice (``max_len`` is an upper bound on the context, e.g. the
    block-table width times the block size, so no device sync is needed):

    * no partition longer than ``MAX_PARTITION`` tokens, so that mixed lengths
      balance, and none shorter than ``MIN_PARTITION`` tokens;
    * among those, the split count that minimises
      ``waves x (partition + PROGRAM_OVERHEAD_TOKENS)``, where
      a wave is ``RESIDENT_PROGRAMS_PER_SM x num_sms`` programs running at once
      (the H100 fits two default decode programs per SM: 3 stages of 64-token
      K and V tiles).  This avoids a last, mostly empty wave: on the H100,
      batch 16 x 8 KV heads x 8,192 tokens took 0.226 ms with 5 splits (640
      programs, 2.4 waves) and 0.199 ms with 4 (512 programs, 1.9 waves);
    * ties go to about two waves of programs (enough in flight, few partials).

    * ``min_len`` (a lower bound on the lengths, a host hint): when it is at least
      ``UNIFORM_FRACTION`` of ``max_len`` the lengths are near-uniform, and if the
      (sequence, KV head) pairs alone fill a wave, nothing needs balancing and the
      ``MAX_PARTITION`` cap is lifted (on the H100, gqa batch 64 x 8,192 took 0.7243 ms
      with 1 split against 0.7348 ms with the cap's 4).

    Partitions are multiples of ``block_n``.
    """
    max_len = max(int(max_len), 1)
    if num_splits is not None:
        splits = max(1, int(num_splits))
        if splits == 1:
            return 1, max_len
        return _partition_for(max_len, splits, block_n)
    units = max(num_seqs * num_kv_heads, 1)
    slots = RESIDENT_PROGRAMS_PER_SM * num_sms
    # near-uniform lengths and a batch that fills a wave of programs by itself: splitting would only
    # balance, and there is nothing to balance (with fewer programs than slots the cap still helps:
    # gqa b16 x 8,192 took 0.1986 ms with 4 splits, 0.2040 ms with 2)
    uniform = min_len is not None and int(min_len) >= UNIFORM_FRACTION * max_len and units >= slots
    # fewer (sequence, KV head) pairs than SMs: count programs per SM, so that every SM gets the same
    # number (on the H100, gqa b1 x 8,192: 16 splits = 128 programs took 0.0261 ms, 32 splits 0.0273)
    per_sm = SPLIT_MODEL == "per_sm" and units < num_sms
    s_min = -(-max_len // MAX_PARTITION) if max_len > MAX_PARTITION and not uniform else 1
    s_max = max(s_min, -(-max_len // MIN_PARTITION))
    best = None
    for s in range(s_min, min(s_max, 256) + 1):
        s_eff, part = (1, max_len) if s == 1 else _partition_for(max_len, s, block_n)
        if s_eff != s:
            continue
        progs = units * s
        if per_sm:
            waves = -(-progs // num_sms)
            key = (waves * (part + PROGRAM_OVERHEAD_TOKENS), abs(progs - 2 * num_sms), s)
        else:
            waves = -(-progs // slots)
            key = (waves * (part + PROGRAM_OVERHEAD_TOKENS), abs(progs - 2 * slots), s)
        if best is None or key < best[0]:
            best = (key, s, part)
    if best is None:
        return 1, max_len
    return best[1], best[2]


def _split_plan(
    num_seqs: int,
    num_groups: int,
    max_len: int,
    block_n: int,
    num_sms: int,
    num_splits: int | None,
    min_len: int | None,
    allow_auto_uniform: bool = True,
) -> tuple[int, int, bool, int]:
    """``(num_splits, partition_size, auto_uniform, uniform_partition)`` of a decode launch.

    Without a ``min_len`` hint the kernel makes the hint's test on the device: the grid is sized for the capped
    split count of ``_choose_partition``, and when every length is at least ``UNIFORM_FRACTION`` of the longest
    the sequences use ``uniform_partition``, the partition the hint would have given (the programs this leaves
    without work exit at once). ``auto_uniform`` is False where the hint would change nothing (automatic split
    choice only, batches of at most ``AUTO_UNIFORM_MAX_SEQS``)."""
    splits, part = _choose_partition(num_seqs, num_groups, max_len, block_n, num_sms, num_splits, min_len)
    # the hint changes nothing unless the cap split the batch and the pairs fill a wave (_choose_partition's
    # uniform rule); checked first so that other calls search the split counts once
    if (
        allow_auto_uniform
        and num_splits is None
        and min_len is None
        and splits > 1
        and num_seqs <= AUTO_UNIFORM_MAX_SEQS
        and max_len > MAX_PARTITION
        and num_seqs * num_groups >= RESIDENT_PROGRAMS_PER_SM * num_sms
    ):
        u_splits, u_part = _choose_partition(num_seqs, num_groups, max_len, block_n, num_sms, None, max_len)
        if u_splits < splits:
            return splits, part, True, u_part
    return splits, part, False, part


def _balanced_default(
    num_seqs: int,
    num_kv_heads: int,
    max_len: int,
    min_len: int | None,
    num_splits: int | None,
    heads_per_program: int = 1,
) -> bool:
    """Whether a decode call without ``config["balanced"]`` takes the balanced (stream-K) path
    (``kernels/decode_balanced.py``): only when the caller's ``min_seq_len`` hint marks the batch as mixed (below
    ``UNIFORM_FRACTION`` of ``max_len``), the split count is automatic, and the batch has ``BALANCED_MIN_SEQS`` to
    ``BALANCED_MAX_PAIRS / num_kv_heads`` sequences. Without a hint the host cannot tell a mixed batch from a uniform
    one, and on uniform batches the balanced path measured slower (reports/kernels/README.md, round 5)."""
    return (
        min_len is not None
        and num_splits is None
        and heads_per_program == 1
        and int(min_len) < UNIFORM_FRACTION * max_len
        and BALANCED_MIN_SEQS <= num_seqs
        and num_seqs * num_kv_heads <= BALANCED_MAX_PAIRS
    )


def _auto_fused(num_seqs: int, num_kv_heads: int, splits: int, device: torch.device) -> bool:
    """The default of ``fused_reduce`` (with ``FUSED_DEFAULT == "one_wave"``: True only when all
    ``num_seqs x num_kv_heads x splits`` programs are resident at once; see ``_decode_launch``)."""
    if FUSED_DEFAULT == "always":
        return splits > 1
    return num_seqs * num_kv_heads * splits <= RESIDENT_PROGRAMS_PER_SM * _num_sms(device)


def _decode_config(
    head_pad: int, group: int, dtype: torch.dtype, block_size: int, units: int | None = None, num_sms: int = 132
) -> dict:
    """Default decode config; ``units`` is the number of (sequence, KV head) pairs."""
    block_n = 64 if head_pad <= 128 else 32
    if _interpreting():
        block_n = 32
    # From the H100 sweeps (reports/kernels/bench_run1.md, bench_run2.md): tensor-core dots
    # (q rows padded to 16) beat the CUDA-core path even for MHA (1.5x at batch 64 x 2,048);
    # launching the KV heads of one token range next to each other gains 0.5-1.3%.
    # num_stages=3 gives the K/V loads a single shared-memory buffer (the block-table load takes a
    # pipeline stage): each program waits for every tile. That is enough when several programs
    # share an SM, i.e. on large grids.
    cfg = dict(
        block_n=block_n,
        num_warps=4,
        num_stages=3,
        use_dot=True,
        head_major=True,
        evict="",
        fuse_always=False,
        heads_per_program=1,
    )
    if units is not None and units < num_sms and head_pad <= 128 and not _interpreting():
        # Small grids (fewer (sequence, KV head) pairs than SMs: batch 1, GQA batch 16): few programs
        # per SM, so each must keep loads in flight. 32-token tiles with 5 stages get two K/V buffers
        # (a tile in flight while one is used) in 38 KB of shared memory and ~100 registers; on the
        # H100 (round 3): mha b1 x 8,192 0.0637 vs 0.0653 ms, gqa b1 x 8,192 0.0258 vs 0.0268 ms,
        # gqa b1 x 2,048 0.0164 vs 0.0177 ms. The fused kernel of this shape has fewer registers
        # than the unfused one (96 vs 106), so it is fused on every split grid.
        cfg.update(block_n=32, num_stages=5, fuse_always=True)
        if group > 1 and units * TINY_GRID_FRACTION <= num_sms:
            # Tiny grouped-query grids (batch 1 or 2 with 8 KV heads): each program reads only a few tiles, so
            # its start-up latency counts. Register prefetch with 64-token tiles issues the first tile's
            # block-table load before the length arrives. Same-process H100 A/B (round 4, call e, two
            # repeats): gqa b1 x 8,192 0.0259-0.0260 vs 0.0267-0.0268 ms, x 2,048 0.0156-0.0157 vs
            # 0.0167-0.0170, x 512 0.0141 vs 0.0150-0.0151. On MHA batch 1 (32 pairs) it was 1-2% slower,
            # on gqa b16 (128 pairs) 1.4% slower, so it is not used there.
            cfg.update(block_n=64, num_stages=1, prefetch=True)
    return cfg


def _decode_launch(
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
):
    assert q.dim() == 3 and k.shape == v.shape
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
    cfg = _decode_config(head_pad, group, q.dtype, block_size, num_seqs * num_kv_heads, _num_sms(q.device))
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
    scale_log2 = float(scale) * _LOG2E

    balanced = cfg.get("balanced")
    if balanced is None:
        balanced = fused_reduce is None and _balanced_default(
            num_seqs, num_kv_heads, max_seq_len, min_seq_len, num_splits, hp
        )
    if balanced and hp == 1:
        from kernels.decode_balanced import MAX_SEQS, balanced_decode_launch

        if num_seqs <= MAX_SEQS:
            return balanced_decode_launch(
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
            )

    splits, part, auto_uniform, uniform_part = _split_plan(
        num_seqs,
        num_groups,
        max_seq_len,
        block_n,
        _num_sms(q.device),
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
        # Auto: fuse only when the whole grid is one wave of resident programs. There the reduce
        # launch after the wave is pure overhead, and fusing was faster on every such H100 case
        # (e.g. gqa b1 x 8,192: 0.0268 vs 0.0277 ms). On multi-wave grids of equal partitions it was
        # slower, unexplained (gqa b16 x 8,192, 4 splits: 0.234 vs 0.199 ms; reports/kernels/README.md).
        fused_reduce = bool(cfg["fuse_always"]) or _auto_fused(num_seqs, num_groups, splits, q.device)
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
    maxnreg = cfg.get("maxnreg", FUSED_MAXNREG if fused else None)
    if maxnreg and not _interpreting():
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
        DOT_PREC=_dot_precision(q.dtype),
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
        num_warps=int(cfg["num_warps"]),
        num_stages=int(cfg["num_stages"]),
        **launch_opts,
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
            *po_st,
            *pl_st,
            out.stride(0),
            out.stride(1),
            HEAD=head,
            HEAD_PAD=triton.next_power_of_2(head),
            CHUNK=chunk,
            AUTO_UNIFORM=auto_uniform,
            NSEQ_PAD=nseq_pad,
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
) -> torch.Tensor:
    """Decode attention through block tables.

    Args:
        q: ``[num_seqs, num_q_heads, head_size]`` fp16/bf16/fp32.
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``,
            same dtype as ``q``; the head_size axis must be contiguous (other
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
            automatic (see ``_choose_partition``).
        out: optional output tensor (same shape as ``q``).
        min_seq_len: optional host hint, a lower bound on ``seq_lens`` in tokens. When it
            is within ``UNIFORM_FRACTION`` of ``max_seq_len`` and the batch fills a wave of
            programs, the 2,048-token partition cap (there to balance mixed lengths) is lifted.
            A wrong hint costs speed, never correctness. Without it the kernel makes the same
            test on the device where it would change the split choice (see ``_split_plan``).
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
            ``_decode_config``), ``early_bt`` (with ``prefetch``: the first tile's block ids
            loaded before the length arrives; default True). See ``reports/kernels/README.md``,
            round 4. ``auto_uniform`` (default True): the
            device-side form of the ``min_seq_len`` test when no hint is given. ``balanced``
            (default: see ``min_seq_len``): the stream-K kernel of ``kernels/decode_balanced.py``,
            one program per resident slot with equal shares of the KV tiles, which ignores
            ``num_splits`` and ``fused_reduce`` (batches of more than 1,024 sequences keep the split path); with it ``programs`` / ``programs_per_sm`` (grid size)
            and ``maxnreg`` (register cap). See ``reports/kernels/README.md``, round 5.

    Returns:
        ``out`` ``[num_seqs, num_q_heads, head_size]`` in ``q``'s dtype.
    """
    assert k_cache.dim() == 4, "k_cache must be [num_blocks, block_size, num_kv_heads, head_size]"
    return _decode_launch(
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
) -> torch.Tensor:
    """Decode attention over per-sequence contiguous ranges of one flat pool.

    Args:
        k_pool, v_pool: ``[num_slots, num_kv_heads, head_size]`` (slot = token address).
        seq_starts: int64 ``[num_seqs]``, first slot of each sequence.
        seq_lens: int32 ``[num_seqs]``; sequence ``s`` uses slots
            ``seq_starts[s] .. seq_starts[s] + seq_lens[s] - 1``.
        max_seq_len: upper bound on ``seq_lens``; if omitted it is read from
            the device (one synchronisation).
        min_seq_len, fused_reduce: as for :func:`paged_decode_attention`.

    Other arguments as :func:`paged_decode_attention`.
    """
    assert k_pool.dim() == 3, "k_pool must be [num_slots, num_kv_heads, head_size]"
    assert seq_starts.dtype == torch.int64
    return _decode_launch(
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
    )


# --------------------------------------------------------------------------------------
# prefill with cached context
# --------------------------------------------------------------------------------------


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
    for n0 in range(0, full_end, BLOCK_N):
        offs = n0 + offs_n
        blk = tl.load(bt_row + offs // BLOCK_SIZE).to(tl.int64)
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        k = tl.load(
            k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0
        )
        v = tl.load(
            v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0
        )
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

    # the diagonal: causal and length masks
    diag_end = tl.minimum(seq_len, ctx + m0 + BLOCK_M)
    for n0 in range(full_end, diag_end, BLOCK_N):
        offs = n0 + offs_n
        n_mask = offs < seq_len
        blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        visible = (offs[None, :] <= q_pos[:, None]) & n_mask[None, :]
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

    if HAS_CTX:
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
    if PIPE_QK:
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


def _pos_scale(scale: float, cfg: dict, dtype: torch.dtype) -> int:
    """``_attend_tile``'s POS_SCALE: 0 = scale applied before the row maximum; 1 = scale folded into the exponent's
    multiply-add (``fold_scale``, default, needs scale > 0); 2 = folded, with packed 16-bit exp2 (``exp16``, fp16/bf16
    on the GPU only: the interpreter cannot run inline PTX)."""
    if not (float(scale) > 0 and bool(cfg.get("fold_scale", True))):
        return 0
    if cfg.get("exp16") and dtype in (torch.float16, torch.bfloat16) and not _interpreting():
        return 2
    return 1


def _lazy_tau(scale: float, cfg: dict, dtype: torch.dtype) -> float:
    """``_attend_tile``'s LAZY_TAU (config ``lazy_rescale``: ``True`` for 8, or a threshold in log2 units; off by
    default). 0.0 = rescale on every tile. Only the folded-scale form (``_pos_scale`` 1) has the lazy step, and
    the threshold is capped at 8 in 16-bit dtypes and 32 in fp32, so that ``p <= 2**tau`` fits the dot's input."""
    tau = cfg.get("lazy_rescale", False)
    if tau is True:
        tau = 8.0
    tau = float(tau or 0.0)
    if tau <= 0.0 or _pos_scale(scale, cfg, dtype) != 1:
        return 0.0
    return min(tau, 8.0 if dtype in (torch.float16, torch.bfloat16) else 32.0)


def _prefill_newkv_config(
    head_pad: int, dtype: torch.dtype, max_query_len: int = 0, max_context_len: int | None = None
) -> dict:
    """Defaults of the contiguous-new-K/V prefill path (``paged_prefill_attention(new_key=...)``).

    For fp16/bf16 and head sizes padded to 128, with a positive ``max_context_len`` hint and at least
    ``WIDE_PREFILL_MIN_QUERY`` new tokens, 128 x 128 tiles with 8 warps; otherwise (pure prefill, no hint, fp32)
    64 x 64 with 4 warps."""
    if _interpreting():
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=1, tma=False, warp_specialize=False, reverse_m=True)
    if head_pad <= 128:
        if (
            head_pad == 128
            and dtype in _WIDE_DTYPES
            and max_context_len is not None
            and max_context_len > 0
            and max_query_len >= WIDE_PREFILL_MIN_QUERY
        ):
            # with cached context, 128-row tiles read each context tile once per 128 queries instead of 64: on the
            # H100 (round 6, calls f and g) 1-6% faster on every context case (e.g. 3,072 + 1,024: 0.6543 vs
            # 0.6874 ms; gqa 0.6402 vs 0.6800; 16 x 256 on 1,792: 0.4195 vs 0.4355)
            return dict(
                block_m=128, block_n=128, num_warps=8, num_stages=3, tma=True, warp_specialize=False, reverse_m=True
            )
        # pure prefill: best of the H100 sweeps (reports/kernels/bench_run7.md; round 6 call f), 4 x 2,048: 64 x 64
        # tiles, 4 warps, 3 stages, TMA 0.3076 ms; 128 x 128 / 8 warps 0.3364 (one program per SM: 230 KB of
        # shared memory); 128 x 64 / 8 warps 0.3501; pointer loads instead of TMA 0.409 (run 7)
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3, tma=True, warp_specialize=False, reverse_m=True)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2, tma=False, warp_specialize=False, reverse_m=True)


def _tma_ok(t: torch.Tensor, head: int, head_pad: int) -> bool:
    """Whether ``[T, H, D]`` can be described as the 2-D TMA view ``[T, H * D]`` (16-byte rules)."""
    es = t.element_size()
    return (
        head == head_pad
        and t.stride(-1) == 1
        and t.stride(-2) == head
        and (t.stride(0) * es) % 16 == 0
        and t.data_ptr() % 16 == 0
        and head * es >= 16
    )


def _tma_desc(t: torch.Tensor, block_rows: int, head: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, [t.shape[0], t.shape[1] * head], [t.stride(0), 1], [block_rows, head])


def _shape_override(config: dict | None) -> bool:
    """Whether a prefill ``config`` sets any part of the tile shape (then the wide default is not used)."""
    return bool(config) and any(k in config for k in ("block_m", "block_n", "num_warps", "num_stages"))


def _prefill_config(head_pad: int, dtype: torch.dtype, max_query_len: int = 0) -> dict:
    """Defaults of the paged prefill kernel: for fp16/bf16 and head sizes padded to 128 (the measured ones),
    128 x 128 tiles with 8 warps once a sequence has at least ``WIDE_PREFILL_MIN_QUERY`` new tokens, else 64 x 64
    with 4 warps."""
    if _interpreting():
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=1)
    if head_pad <= 128:
        if head_pad == 128 and dtype in _WIDE_DTYPES and max_query_len >= WIDE_PREFILL_MIN_QUERY:
            # H100, round 6 (calls f and g, each timed twice): faster than 64 x 64 on all six cases, by 1% on pure
            # prefill 4 x 2,048 (0.4792 / 0.4721 vs 0.4830 / 0.4777 ms) and 3-7% with context (3,072 + 1,024:
            # 0.7004 / 0.7041 vs 0.7417 / 0.7380; gqa 0.6605 / 0.6602 vs 0.7102 / 0.7038; 16 x 256 on 1,792:
            # 0.4297 / 0.4300 vs 0.4450 / 0.4424). Each program reads its K/V tiles once per 128 queries.
            return dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
        # short prompts: a 128-row tile would be mostly padding (bench_run1.md's sweep chose 64 x 64)
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2)


def paged_prefill_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    cu_seqlens_q,
    context_lens,
    scale,
    *,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
    config: dict | None = None,
    new_key: torch.Tensor | None = None,
    new_value: torch.Tensor | None = None,
    max_context_len: int | None = None,
) -> torch.Tensor:
    """Causal attention of new tokens over their cached context and themselves.

    Contract: the new tokens' K/V are already in the paged cache (write them
    with :func:`kernels.cache_ops.write_kv` first) at positions
    ``context_lens[s] .. context_lens[s] + new_len - 1`` of sequence ``s``, so
    every key is read through the block table.

    Args:
        q: ``[total_new_tokens, num_q_heads, head_size]``; sequence ``s`` owns
            rows ``cu_seqlens_q[s] : cu_seqlens_q[s + 1]``.
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``.
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]`` covering
            ``context_lens[s] + new_len`` tokens.
        cu_seqlens_q: int32 ``[num_seqs + 1]``, cumulative new-token counts (starts at 0).
        context_lens: int32 ``[num_seqs]``, tokens already cached before the new ones
            (prefix-cache hit, preempted and recomputed, or earlier prefill chunks).
        scale: softmax scale.
        max_query_len: upper bound on new tokens per sequence; if omitted it is
            read from the device (one synchronisation).
        new_key, new_value: optional ``[total_new_tokens, num_kv_heads, head_size]``, the
            new tokens' K/V as just computed (rows aligned with ``q``). When given, keys at
            positions ``>= context_lens[s]`` are read from them (contiguous tiles, TMA on the
            GPU) instead of through the block table, and the cache needs to hold only the
            context. The cache is not written here.
        max_context_len: optional host hint, an upper bound on ``context_lens`` (with
            ``new_key``); ``0`` compiles the context loop away (pure prefill). With ``0`` on a
            compute-capability-9 GPU, ``config={"wgmma": True}`` (or a dict of its options) runs the
            Gluon warp-group-MMA kernel of :mod:`kernels.prefill_wgmma` instead (with no config:
            ``WGMMA_PREFILL_DEFAULT``, on); calls it does not support fall back to the Triton kernel.
            With ``new_key`` and cached context, likewise for its mixed form (``WGMMA_MIXED_PREFILL_DEFAULT``,
            on). Without ``new_key``, the same holds for the Gluon kernel's paged form
            (``WGMMA_PAGED_PREFILL_DEFAULT``, on): fp16/bf16, head size 64 or 128, block sizes that are
            multiples of 8 dividing 128 or multiples of 128, compute capability 9.x.

    Returns:
        ``[total_new_tokens, num_q_heads, head_size]`` in ``q``'s dtype.
    """
    assert q.dim() == 3 and k_cache.dim() == 4 and k_cache.shape == v_cache.shape
    total, num_q_heads, head = q.shape
    num_kv_heads = k_cache.shape[2]
    assert k_cache.shape[3] == head and num_q_heads % num_kv_heads == 0
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1
    assert cu_seqlens_q.dtype == torch.int32 and context_lens.dtype == torch.int32
    if q.stride(-1) != 1:
        q = q.contiguous()
    num_seqs = context_lens.shape[0]
    if out is None:
        out = torch.empty_like(q)
    if total == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item())
    if max_query_len <= 0:
        return out
    head_pad = max(16, triton.next_power_of_2(head))
    if new_key is not None:
        _prefill_newkv_launch(
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
            max_query_len,
            max_context_len,
            head_pad,
            config,
        )
        return out
    if _use_wgmma(config, WGMMA_PAGED_PREFILL_DEFAULT):
        from kernels import prefill_wgmma

        wg = _wgmma_options(config)
        ok, _why = prefill_wgmma.supported_paged(q, k_cache, v_cache, scale, wg)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_wgmma.prefill_wgmma_paged_attention(
                q,
                k_cache,
                v_cache,
                block_tables,
                cu_seqlens_q,
                context_lens,
                scale,
                int(max_query_len),
                out=out,
                config=wg,
            )
            return out
    # an override of the tile shape applies on top of the 64 x 64 base, as before the wide default existed
    wide_q = 0 if _shape_override(config) else int(max_query_len)
    cfg = _prefill_config(head_pad, q.dtype, wide_q)
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
        float(scale) * _LOG2E,
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
        DOT_PREC=_dot_precision(q.dtype),
        POS_SCALE=_pos_scale(scale, cfg, q.dtype),
        LAZY_TAU=_lazy_tau(scale, cfg, q.dtype),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out


# Pure prefill with new K/V runs the Gluon kernel by default where it can: on the H100 (round 7) it took 0.2635 /
# 0.2673 ms on 4 x 2,048 (MHA) against this module's Triton kernel's 0.3084 / 0.3164 and cuDNN's 0.2659
WGMMA_PREFILL_DEFAULT = True
# The paged form (every key through the block table, with or without cached context) likewise: on the H100 (round 7,
# call e) 0.2897 vs 0.4769 ms on 4 x 2,048; 0.4167 vs 0.7118 with 1,024 new tokens on 3,072 cached; 0.2804 vs
# 0.4332 on chunked 16 x 256 on 1,792. Block sizes it cannot copy whole (one-token blocks) keep the Triton kernel.
WGMMA_PAGED_PREFILL_DEFAULT = True
# New K/V with cached context (the mixed form: context through the table, new tokens contiguous): round 7, call f,
# 0.3982 / 0.4197 ms against this module's Triton kernel's 0.6536 with 1,024 new tokens on 3,072 cached (MHA);
# 0.2719 / 0.2750 against 0.4267 on chunked 16 x 256 on 1,792
WGMMA_MIXED_PREFILL_DEFAULT = True


def _wgmma_options(config: dict | None) -> dict | None:
    """The Gluon kernel's options: ``config["wgmma"]`` when it is a dict, else None (its defaults)."""
    wg = config.get("wgmma") if config else None
    return wg if isinstance(wg, dict) else None


def _use_wgmma(config: dict | None, default: bool) -> bool:
    """Whether a prefill call goes to the Gluon warp-group-MMA kernel (:mod:`kernels.prefill_wgmma`) when the GPU
    supports it: ``config={"wgmma": True}`` or a dict of that kernel's options, ``False`` for the
    Triton kernel. A config without the key is one of the Triton kernel's A/B options and keeps it; no config
    means ``default`` (the caller passes one of the ``WGMMA_*_PREFILL_DEFAULT`` switches, read at call time so that
    setting the module attribute takes effect)."""
    if config:
        return bool(config.get("wgmma", False))
    return default


def _prefill_newkv_launch(
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
    max_query_len,
    max_context_len,
    head_pad,
    config,
) -> None:
    total, num_q_heads, head = q.shape
    num_kv_heads = k_cache.shape[2]
    num_seqs = context_lens.shape[0]
    assert new_value is not None and new_key.shape == new_value.shape == (total, num_kv_heads, head), (
        "new_key/new_value must be [total_new_tokens, num_kv_heads, head_size]"
    )
    assert new_key.stride(-1) == 1 and new_value.stride(-1) == 1
    if max_context_len is not None and int(max_context_len) == 0 and _use_wgmma(config, WGMMA_PREFILL_DEFAULT):
        from kernels import prefill_wgmma

        ok, _why = prefill_wgmma.supported(q, new_key, new_value, scale)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_wgmma.prefill_wgmma_attention(
                q, new_key, new_value, cu_seqlens_q, scale, int(max_query_len), out=out, config=_wgmma_options(config)
            )
            return
    if (max_context_len is None or int(max_context_len) > 0) and _use_wgmma(config, WGMMA_MIXED_PREFILL_DEFAULT):
        from kernels import prefill_wgmma

        wg = _wgmma_options(config)
        ok, _why = prefill_wgmma.supported_mixed(q, k_cache, v_cache, new_key, new_value, scale, wg)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_wgmma.prefill_wgmma_mixed_attention(
                q,
                k_cache,
                v_cache,
                block_tables,
                cu_seqlens_q,
                context_lens,
                scale,
                new_key,
                new_value,
                int(max_query_len),
                out=out,
                config=wg,
            )
            return
    wide_q = 0 if _shape_override(config) else int(max_query_len)  # as in paged_prefill_attention
    cfg = _prefill_newkv_config(head_pad, q.dtype, wide_q, None if max_context_len is None else int(max_context_len))
    if config:
        cfg.update(config)
    block_m, block_n = int(cfg["block_m"]), int(cfg["block_n"])
    assert block_m % block_n == 0, "block_m must be a multiple of block_n"
    use_tma = (
        bool(cfg["tma"])
        and q.dtype != torch.float32
        and all(_tma_ok(t, head, head_pad) for t in (q, new_key, new_value))
    )
    if use_tma:
        q_desc = _tma_desc(q, block_m, head)
        kn_desc, vn_desc = _tma_desc(new_key, block_n, head), _tma_desc(new_value, block_n, head)
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
        float(scale) * _LOG2E,
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
        DOT_PREC=_dot_precision(q.dtype),
        HAS_CTX=max_context_len is None or int(max_context_len) > 0,
        USE_TMA=use_tma,
        WARP_SPEC=bool(cfg["warp_specialize"]),
        REVERSE_M=bool(cfg["reverse_m"]),
        POS_SCALE=_pos_scale(scale, cfg, q.dtype),
        LAZY_TAU=_lazy_tau(scale, cfg, q.dtype),
        PIPE_QK=bool(cfg.get("pipeline_qk", False)),
        num_warps=int(cfg["num_warps"]),
        num_stages=int(cfg["num_stages"]),
    )


__all__ = [
    "paged_decode_attention",
    "contiguous_decode_attention",
    "paged_prefill_attention",
]
