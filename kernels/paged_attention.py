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

import math
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

_SM_COUNT: dict = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # behave like an H100 so the CPU tests exercise the same choices
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, starts_ptr,
    out_ptr, po_ptr, plse_ptr,
    scale_log2, partition_size,
    stride_qs, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_bts,
    stride_os, stride_oh,
    stride_pos, stride_poh, stride_pop,
    stride_pls, stride_plh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr, SPLIT: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr, HEAD_MAJOR: tl.constexpr, EVICT: tl.constexpr,
):
    if HEAD_MAJOR:  # consecutive programs read the same blocks (all KV heads of one token range)
        kvh = tl.program_id(0)
        seq = tl.program_id(1)
    else:
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
    part = tl.program_id(2)
    seq64 = seq.to(tl.int64)

    seq_len = tl.load(lens_ptr + seq)
    start = part * partition_size
    if SPLIT:
        if start >= seq_len:
            return
        end = tl.minimum(start + partition_size, seq_len)
    else:
        end = seq_len

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    qh = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    if HEAD == HEAD_PAD:
        q_mask = g_mask[:, None]
    else:
        q_mask = g_mask[:, None] & (offs_d < HEAD)[None, :]
    q = tl.load(q_ptr + seq64 * stride_qs + qh[:, None] * stride_qh + offs_d[None, :],
                mask=q_mask, other=0.0)

    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    if not PAGED:
        seq_start = tl.load(starts_ptr + seq).to(tl.int64)

    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], dtype=tl.float32)

    for n0 in range(start, end, BLOCK_N):
        offs = n0 + offs_n
        n_mask = offs < end
        if PAGED:
            blk = tl.load(bt_ptr + seq64 * stride_bts + offs // BLOCK_SIZE, mask=n_mask, other=0)
            blk = blk.to(tl.int64)
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
            kv_mask = n_mask[:, None] & (offs_d < HEAD)[None, :]
        k = tl.load(k_base + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0, eviction_policy=EVICT)
        v = tl.load(v_base + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0, eviction_policy=EVICT)

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
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    if HEAD == HEAD_PAD:
        o_mask = g_mask[:, None]
    else:
        o_mask = g_mask[:, None] & (offs_d < HEAD)[None, :]
    if SPLIT:
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))
        po = po_ptr + seq64 * stride_pos + qh[:, None] * stride_poh + part * stride_pop + offs_d[None, :]
        tl.store(po, o, mask=o_mask)
        tl.store(plse_ptr + seq64 * stride_pls + qh * stride_plh + part, lse, mask=g_mask)
    else:
        optr = out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + offs_d[None, :]
        tl.store(optr, o.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _reduce_kernel(
    po_ptr, plse_ptr, lens_ptr, out_ptr, partition_size,
    stride_pos, stride_poh, stride_pop,
    stride_pls, stride_plh,
    stride_os, stride_oh,
    HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, CHUNK: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    seq64 = seq.to(tl.int64)
    seq_len = tl.load(lens_ptr + seq)
    n_parts = tl.cdiv(tl.maximum(seq_len, 0), partition_size)
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
        o = tl.load(po_base + (c0 + offs_c)[:, None] * stride_pop + offs_d[None, :],
                    mask=c_mask[:, None] & (offs_d < HEAD)[None, :], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new)
        den = den * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        m = m_new
    out = acc / tl.where(den > 0.0, den, 1.0)
    tl.store(out_ptr + seq64 * stride_os + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD)


def _partition_for(max_len: int, splits: int, block_n: int) -> tuple[int, int]:
    part = -(-max_len // splits)
    part = -(-part // block_n) * block_n
    return -(-max_len // part), part


def _choose_partition(num_seqs: int, num_kv_heads: int, max_len: int, block_n: int, num_sms: int,
                      num_splits: int | None) -> tuple[int, int]:
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
    s_min = -(-max_len // MAX_PARTITION) if max_len > MAX_PARTITION else 1
    s_max = max(s_min, -(-max_len // MIN_PARTITION))
    best = None
    for s in range(s_min, min(s_max, 256) + 1):
        s_eff, part = (1, max_len) if s == 1 else _partition_for(max_len, s, block_n)
        if s_eff != s:
            continue
        progs = units * s
        waves = -(-progs // slots)
        key = (waves * (part + PROGRAM_OVERHEAD_TOKENS), abs(progs - 2 * slots), s)
        if best is None or key < best[0]:
            best = (key, s, part)
    if best is None:
        return 1, max_len
    return best[1], best[2]


def _decode_config(head_pad: int, group: int, dtype: torch.dtype, block_size: int) -> dict:
    block_n = 64 if head_pad <= 128 else 32
    if _interpreting():
        block_n = 32
    # From the H100 sweeps (reports/kernels/bench_run1.md, bench_run2.md): tensor-core dots
    # (q rows padded to 16) beat the CUDA-core path even for MHA (1.5x at batch 64 x 2,048);
    # launching the KV heads of one token range next to each other gains 0.5-1.3%; three
    # pipeline stages gain ~0.3%.
    return dict(block_n=block_n, num_warps=4, num_stages=3, use_dot=True, head_major=True, evict="")


def _decode_launch(q, k, v, block_tables, starts, seq_lens, scale, *, paged: bool, block_size: int,
                   max_seq_len, num_splits, out, config):
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
    cfg = _decode_config(head_pad, group, q.dtype, block_size)
    if config:
        cfg.update(config)
    use_dot = bool(cfg["use_dot"])
    group_pad = max(16, triton.next_power_of_2(group)) if use_dot else triton.next_power_of_2(group)
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
    splits, part = _choose_partition(num_seqs, num_kv_heads, max_seq_len, block_n, _num_sms(q.device),
                                     num_splits)
    if paged:
        assert block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1
        bt, stride_bts = block_tables, block_tables.stride(0)
        kst = (k.stride(0), k.stride(1), k.stride(2))
        vst = (v.stride(0), v.stride(1), v.stride(2))
        starts_arg = seq_lens  # unused
    else:
        bt, stride_bts = seq_lens, 0  # unused
        kst = (k.stride(0), 0, k.stride(1))
        vst = (v.stride(0), 0, v.stride(1))
        starts_arg = starts
    scale_log2 = float(scale) * _LOG2E

    if splits > 1:
        po = torch.empty((num_seqs, num_q_heads, splits, head), dtype=torch.float32, device=q.device)
        plse = torch.empty((num_seqs, num_q_heads, splits), dtype=torch.float32, device=q.device)
        po_st = po.stride()[:3]
        pl_st = plse.stride()[:2]
    else:
        po, plse = out, out  # unused
        po_st, pl_st = (0, 0, 0), (0, 0)

    head_major = bool(cfg["head_major"])
    grid = (num_kv_heads, num_seqs, splits) if head_major else (num_seqs, num_kv_heads, splits)
    _decode_kernel[grid](
        q, k, v, bt, seq_lens, starts_arg,
        out, po, plse,
        scale_log2, part,
        q.stride(0), q.stride(1),
        *kst, *vst,
        stride_bts,
        out.stride(0), out.stride(1),
        *po_st, *pl_st,
        GROUP=group, GROUP_PAD=group_pad, HEAD=head, HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n,
        PAGED=paged, SPLIT=splits > 1, USE_DOT=use_dot, DOT_PREC=_dot_precision(q.dtype),
        HEAD_MAJOR=head_major, EVICT=str(cfg["evict"]),
        num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
    )
    if splits > 1:
        chunk = min(16, triton.next_power_of_2(splits))
        _reduce_kernel[(num_seqs, num_q_heads)](
            po, plse, seq_lens, out, part,
            *po_st, *pl_st,
            out.stride(0), out.stride(1),
            HEAD=head, HEAD_PAD=triton.next_power_of_2(head), CHUNK=chunk,
            num_warps=4,
        )
    return out


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, *,
                           max_seq_len: int | None = None, num_splits: int | None = None,
                           out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Decode attention through block tables.

    Args:
        q: ``[num_seqs, num_q_heads, head_size]`` fp16/bf16/fp32.
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``,
            same dtype as ``q``; the head_size axis must be contiguous (other
            strides are free).
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]``, last axis contiguous.
            Entries past a sequence's last block are never read.
        seq_lens: int32 ``[num_seqs]``, tokens of context per sequence
            (``0`` gives a zero output row).
        scale: softmax scale, usually ``head_size ** -0.5``.
        max_seq_len: an upper bound on ``seq_lens`` used to size the split-KV
            grid; defaults to ``max_blocks_per_seq * block_size`` (no device sync).
        num_splits: force the number of KV splits (``1`` = no split-KV); default
            automatic (see ``_choose_partition``).
        out: optional output tensor (same shape as ``q``).
        config: tuning overrides: ``block_n`` (tokens per loop step), ``num_warps``,
            ``num_stages``, ``use_dot`` (tensor-core dots, default; ``False`` = CUDA-core
            reductions), ``head_major`` (launch the KV heads of one token range next to
            each other), ``evict`` (``""`` or ``"evict_first"`` for the K/V loads).

    Returns:
        ``out`` ``[num_seqs, num_q_heads, head_size]`` in ``q``'s dtype.
    """
    assert k_cache.dim() == 4, "k_cache must be [num_blocks, block_size, num_kv_heads, head_size]"
    return _decode_launch(q, k_cache, v_cache, block_tables, None, seq_lens, scale, paged=True,
                          block_size=k_cache.shape[1], max_seq_len=max_seq_len, num_splits=num_splits,
                          out=out, config=config)


def contiguous_decode_attention(q, k_pool, v_pool, seq_starts, seq_lens, scale, *,
                                max_seq_len: int | None = None, num_splits: int | None = None,
                                out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Decode attention over per-sequence contiguous ranges of one flat pool.

    Args:
        k_pool, v_pool: ``[num_slots, num_kv_heads, head_size]`` (slot = token address).
        seq_starts: int64 ``[num_seqs]``, first slot of each sequence.
        seq_lens: int32 ``[num_seqs]``; sequence ``s`` uses slots
            ``seq_starts[s] .. seq_starts[s] + seq_lens[s] - 1``.
        max_seq_len: upper bound on ``seq_lens``; if omitted it is read from
            the device (one synchronisation).

    Other arguments as :func:`paged_decode_attention`.
    """
    assert k_pool.dim() == 3, "k_pool must be [num_slots, num_kv_heads, head_size]"
    assert seq_starts.dtype == torch.int64
    return _decode_launch(q, k_pool, v_pool, None, seq_starts.contiguous(), seq_lens, scale, paged=False,
                          block_size=1, max_seq_len=max_seq_len, num_splits=num_splits, out=out,
                          config=config)


# --------------------------------------------------------------------------------------
# prefill with cached context
# --------------------------------------------------------------------------------------


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, cu_q_ptr, ctx_ptr, out_ptr,
    scale_log2,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_bts,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
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
    q = tl.load(q_ptr + rows[:, None] * stride_qt + qh * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
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
        k = tl.load(k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :],
                    mask=d_mask[None, :], other=0.0)
        v = tl.load(v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :],
                    mask=d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    # the diagonal: causal and length masks
    diag_end = tl.minimum(seq_len, ctx + m0 + BLOCK_M)
    for n0 in range(full_end, diag_end, BLOCK_N):
        offs = n0 + offs_n
        n_mask = offs < seq_len
        blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        in_blk = (offs % BLOCK_SIZE).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + (blk * stride_kb + in_blk * stride_kt)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_base + (blk * stride_vb + in_blk * stride_vt)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
        visible = (offs[None, :] <= q_pos[:, None]) & n_mask[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + qh * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _prefill_config(head_pad: int, dtype: torch.dtype) -> dict:
    if _interpreting():
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=1)
    if head_pad <= 128:
        # best of the H100 sweep in reports/kernels/bench_run1.md (bf16, head size 128)
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2)


def paged_prefill_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, *,
                            max_query_len: int | None = None, out: torch.Tensor | None = None,
                            config: dict | None = None) -> torch.Tensor:
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
    cfg = _prefill_config(head_pad, q.dtype)
    if config:
        cfg.update(config)
    grid = (triton.cdiv(max_query_len, cfg["block_m"]), num_q_heads, num_seqs)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
        float(scale) * _LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=num_q_heads // num_kv_heads, HEAD=head, HEAD_PAD=head_pad,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        DOT_PREC=_dot_precision(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


__all__ = [
    "paged_decode_attention",
    "contiguous_decode_attention",
    "paged_prefill_attention",
]
