"""Balanced split-KV decode (stream-K): every program reads the same number of KV tiles.

The split-KV decode grid (:mod:`kernels.attention.decode`) gives each (sequence, KV head, partition) one
program. Its programs are equal only when the lengths are, and even then their number rarely divides evenly
into the GPU's resident slots: 512 equal programs on an H100 (132 SMs x 4 resident) leave 16 slots empty, so
116 SMs hold 4 programs and 16 hold 3. Here the grid has one program per resident slot, and the flattened list of
work items - ``BLOCK_N``-token tiles of each (sequence, KV head) pair, pairs in (sequence, head) order - is cut
into equal contiguous ranges, one per program. A program may finish one pair's tail and go on to the next pair's
head, so mixed lengths balance as well as uniform ones, with no partition-size heuristic.

A pair read wholly by one program is written straight to the output. Otherwise each program that read part of it
stores a normalised partial output and its log-sum-exp in slot ``program + pair``: along the (program, pair)
staircase of the work list each step raises the program or the pair index by one, so these slots never collide and
``programs + pairs`` of them are enough. A second kernel combines each pair's partials (``combine_partials``).

Every program reads all the lengths (one vector load and a prefix sum), so the work list is built on the device
and the call can be captured in a CUDA graph. With a sliding window (``SLIDING``) a pair's tiles cover only its
sequence's last ``window`` keys. fp8 caches (``KV_FP8``) as in :mod:`kernels.attention.decode`: tiles converted to q's
dtype, ``k_scale`` in ``scale_log2``, ``v_scale`` on the output rows and partials.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention.common import (
    combine_partials,
    decode_step,
    dot_precision,
    interpreting,
    load_kv_tile,
    num_sms,
    tile_blocks,
)

# Largest batch the balanced path takes: every program holds all the lengths in registers.
MAX_SEQS = 1024
# Fewest tiles a program should read when the grid is cut down for short contexts (program start-up, the q load
# and the partial store cost about as much as a few tiles).
MIN_TILES_PER_PROGRAM = 4
# Resident programs per SM assumed where the compiled kernel cannot be inspected (the CPU interpreter).
FALLBACK_PROGRAMS_PER_SM = 2

_RESIDENT: dict = {}


@triton.jit
def _tile_layout(
    lens_ptr, num_seqs, BLOCK_N: tl.constexpr, NSEQ_PAD: tl.constexpr, window=0, SLIDING: tl.constexpr = False
):
    """Per sequence (padded to ``NSEQ_PAD``): its index, its tile count and the running total of tile counts
    (inclusive). With ``SLIDING`` a sequence's tiles cover only its last ``window`` keys."""
    offs = tl.arange(0, NSEQ_PAD)
    lens = tl.load(lens_ptr + offs, mask=offs < num_seqs, other=0)
    if SLIDING:
        lens = tl.minimum(lens, window)
    tiles = (tl.maximum(lens, 0) + BLOCK_N - 1) // BLOCK_N
    ends = tl.cumsum(tiles, axis=0)
    return offs, tiles, ends


@triton.jit
def _locate(x, offs, tiles, ends, num_kv_heads):
    """(sequence, KV head, tile within the pair) of work item ``x`` (int64, below the total): items are
    ordered by sequence, then head, then tile."""
    seq = tl.sum((ends.to(tl.int64) * num_kv_heads <= x).to(tl.int32), axis=0)
    sel = offs == seq
    n_tiles = tl.maximum(tl.sum(tl.where(sel, tiles, 0), axis=0), 1).to(tl.int64)
    first = tl.sum(tl.where(sel, ends - tiles, 0), axis=0).to(tl.int64) * num_kv_heads
    r = x - first
    head = r // n_tiles
    return seq, head.to(tl.int32), r - head * n_tiles


@triton.jit
def _balanced_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    lens_ptr,
    starts_ptr,
    out_ptr,
    po_ptr,
    plse_ptr,
    scale_log2,
    num_seqs,
    num_kv_heads,
    n_slots,
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
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    EVICT: tl.constexpr,
    NSEQ_PAD: tl.constexpr,
    SLIDING: tl.constexpr = False,
    v_scale=1.0,
    KV_FP8: tl.constexpr = False,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_s, tiles, ends = _tile_layout(lens_ptr, num_seqs, BLOCK_N, NSEQ_PAD, window, SLIDING)
    total = tl.sum(tiles.to(tl.int64), axis=0) * num_kv_heads
    a = pid.to(tl.int64) * total // nprog  # this program's work items: [a, b)
    b = (pid + 1).to(tl.int64) * total // nprog
    if a >= total:
        return
    seq, head, tile0 = _locate(a, offs_s, tiles, ends, num_kv_heads)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < GROUP
    if HEAD == HEAD_PAD:
        q_mask = g_mask[:, None]
    else:
        q_mask = g_mask[:, None] & (offs_d < HEAD)[None, :]
    # partials: po [n_slots, GROUP, HEAD], plse [GROUP, n_slots]
    po_rows = offs_g[:, None] * HEAD + offs_d[None, :]

    if a == b:
        # More programs than work items: this one has none, but the pair holding item ``a`` may count it among
        # its programs, so leave a neutral partial (weight zero) in the slot the reduce reads.
        slot = pid + seq * num_kv_heads + head
        tl.store(
            po_ptr + slot.to(tl.int64) * (GROUP * HEAD) + po_rows,
            tl.zeros([GROUP_PAD, HEAD_PAD], dtype=tl.float32),
            mask=q_mask,
        )
        tl.store(plse_ptr + offs_g * n_slots + slot, tl.full([GROUP_PAD], float("-inf"), tl.float32), mask=g_mask)
        return

    seq_len = tl.load(lens_ptr + seq)
    while a < b:
        if SLIDING:
            # the pair's tiles cover its last `window` keys, from position lo on
            lo = tl.maximum(seq_len - window, 0)
            n_keys = seq_len - lo
        else:
            n_keys = seq_len
        n_tiles = ((n_keys + BLOCK_N - 1) // BLOCK_N).to(tl.int64)
        tile1 = tl.minimum(n_tiles, tile0 + (b - a))
        end = tl.minimum(tile1 * BLOCK_N, n_keys).to(tl.int32)
        seq64 = seq.to(tl.int64)
        qh = head * GROUP + offs_g
        q = tl.load(q_ptr + seq64 * stride_qs + qh[:, None] * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
        k_base = k_ptr + head.to(tl.int64) * stride_kh
        v_base = v_ptr + head.to(tl.int64) * stride_vh
        bt_row = bt_ptr + seq64 * stride_bts
        if PAGED:
            seq_start = 0
        else:
            seq_start = tl.load(starts_ptr + seq).to(tl.int64)
        m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_PAD], dtype=tl.float32)
        if SLIDING:
            pos_end = lo + end  # positions, where `end` counts keys of the window
        else:
            pos_end = end
        for n0 in range((tile0 * BLOCK_N).to(tl.int32), end, BLOCK_N):
            if SLIDING:
                offs = lo + n0 + offs_n
            else:
                offs = n0 + offs_n
            blk = tile_blocks(bt_row, offs, pos_end, BLOCK_SIZE, PAGED)
            k, v = load_kv_tile(
                k_base,
                v_base,
                blk,
                offs,
                pos_end,
                seq_start,
                stride_kb,
                stride_kt,
                stride_vb,
                stride_vt,
                offs_d,
                offs_d,
                offs_d,
                BLOCK_SIZE,
                PAGED,
                HEAD,
                HEAD_PAD,
                EVICT,
            )
            if KV_FP8:  # exact conversion; k_scale is in scale_log2, v_scale applied below
                k = k.to(q_ptr.dtype.element_ty)
                v = v.to(q_ptr.dtype.element_ty)
            m_i, l_i, acc = decode_step(q, k, v, offs < pos_end, m_i, l_i, acc, scale_log2, USE_DOT, DOT_PREC)
        if tile1 > tile0:  # a sequence of length 0 has no tiles: the reduce kernel writes its zeros
            l_safe = tl.where(l_i > 0.0, l_i, 1.0)
            o = acc / l_safe[:, None]
            if KV_FP8:
                o = o * v_scale
            if (tile0 == 0) & (tile1 == n_tiles):  # the whole pair: no other program touches it
                tl.store(
                    out_ptr + seq64 * stride_os + qh[:, None] * stride_oh + offs_d[None, :],
                    o.to(out_ptr.dtype.element_ty),
                    mask=q_mask,
                )
            else:
                slot = pid + seq * num_kv_heads + head
                tl.store(po_ptr + slot.to(tl.int64) * (GROUP * HEAD) + po_rows, o, mask=q_mask)
                tl.store(
                    plse_ptr + offs_g * n_slots + slot,
                    tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf")),
                    mask=g_mask,
                )
        a += tile1 - tile0
        tile0 = tile1 * 0  # the next pair starts at its first tile
        head += 1
        wrap = head == num_kv_heads
        seq = tl.where(wrap, seq + 1, seq)
        head = tl.where(wrap, 0, head)
        seq_len = tl.load(lens_ptr + seq, mask=seq < num_seqs, other=0)


@triton.jit
def _balanced_reduce_kernel(
    po_ptr,
    plse_ptr,
    lens_ptr,
    out_ptr,
    num_seqs,
    num_kv_heads,
    n_slots,
    nprog,
    window,
    stride_os,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_R: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NSEQ_PAD: tl.constexpr,
    CHUNK: tl.constexpr,
    SLIDING: tl.constexpr = False,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s, tiles, ends = _tile_layout(lens_ptr, num_seqs, BLOCK_N, NSEQ_PAD, window, SLIDING)
    total = tl.sum(tiles.to(tl.int64), axis=0) * num_kv_heads
    sel = offs_s == seq
    n_tiles = tl.sum(tl.where(sel, tiles, 0), axis=0).to(tl.int64)
    first = tl.sum(tl.where(sel, ends - tiles, 0), axis=0).to(tl.int64) * num_kv_heads + head * n_tiles
    out_base = out_ptr + seq.to(tl.int64) * stride_os + (head * GROUP).to(tl.int64) * stride_oh
    if n_tiles == 0:
        offs_g = tl.arange(0, GROUP_R)
        offs_d = tl.arange(0, HEAD_PAD)
        tl.store(
            out_base + offs_g[:, None] * stride_oh + offs_d[None, :],
            tl.zeros([GROUP_R, HEAD_PAD], dtype=out_ptr.dtype.element_ty),
            mask=(offs_g < GROUP)[:, None] & (offs_d < HEAD)[None, :],
        )
        return
    # the programs whose ranges hold the pair's first and last items (largest p with p * total // nprog <= x)
    p_first = ((first + 1) * nprog - 1) // total
    p_last = ((first + n_tiles) * nprog - 1) // total
    if p_first == p_last:  # written by the decode kernel
        return
    slot0 = p_first + seq * num_kv_heads + head
    combine_partials(
        po_ptr + slot0 * (GROUP * HEAD),
        plse_ptr + slot0,
        out_base,
        0,
        0,
        p_last - p_first + 1,
        0,
        HEAD,
        GROUP * HEAD,
        0,
        n_slots,
        0,
        stride_oh,
        GROUP=GROUP,
        GROUP_R=GROUP_R,
        HEAD=HEAD,
        HEAD_PAD=HEAD_PAD,
        CHUNK=CHUNK,
    )


def resident_programs(
    n_regs: int,
    shared_bytes: int,
    num_warps: int,
    regs_per_sm: int = 65536,
    threads_per_sm: int = 2048,
    smem_per_sm: int = 233472,
) -> int:
    """Programs of a kernel that fit on one SM at once: registers are allocated per warp in units of 256, and each
    program's shared memory carries 1 KB reserved by the runtime (the defaults are an H100's limits)."""
    regs_per_warp = -(-max(int(n_regs), 1) * 32 // 256) * 256
    by_regs = (regs_per_sm // regs_per_warp) // num_warps
    by_threads = threads_per_sm // (32 * num_warps)
    by_smem = smem_per_sm // (int(shared_bytes) + 1024) if shared_bytes else 32
    return max(1, min(by_regs, by_threads, by_smem, 32))


def _resident_per_sm(compiled, num_warps: int, device: torch.device) -> int:
    """``resident_programs`` of a compiled kernel on ``device``."""
    props = torch.cuda.get_device_properties(device)
    init = getattr(compiled, "_init_handles", None)
    if init is not None:  # loads the binary, which fills in n_regs
        init()
    return resident_programs(
        compiled.n_regs,
        compiled.metadata.shared,
        num_warps,
        getattr(props, "regs_per_multiprocessor", 65536),
        getattr(props, "max_threads_per_multi_processor", 2048),
        getattr(props, "shared_memory_per_multiprocessor", 233472),
    )


def balanced_programs(
    kernel_args: tuple,
    constexprs: dict,
    num_warps: int,
    num_stages: int,
    device: torch.device,
    launch_opts: dict | None = None,
) -> int:
    """Resident programs per SM of the balanced decode kernel compiled for ``constexprs`` (cached)."""
    if device.type != "cuda" or interpreting():
        return FALLBACK_PROGRAMS_PER_SM
    launch_opts = launch_opts or {}
    key = (device.index, tuple(sorted(constexprs.items())), num_warps, num_stages, tuple(sorted(launch_opts.items())))
    if key not in _RESIDENT:
        compiled = _balanced_decode_kernel.warmup(
            *kernel_args, grid=(1,), num_warps=num_warps, num_stages=num_stages, **launch_opts, **constexprs
        )
        _RESIDENT[key] = _resident_per_sm(compiled, num_warps, device)
    return _RESIDENT[key]


def balanced_decode_launch(
    q,
    k,
    v,
    bt,
    starts,
    seq_lens,
    scale_log2: float,
    *,
    paged: bool,
    block_size: int,
    max_seq_len: int,
    out: torch.Tensor,
    cfg: dict,
    kst: tuple,
    vst: tuple,
    stride_bts: int,
    window: int = 0,
    v_scale: float = 1.0,
    kv_fp8: bool = False,
) -> torch.Tensor:
    """Launch the balanced decode and its reduce (arguments as prepared by
    :func:`kernels.attention.decode.decode_launch`; ``window > 0``: sliding-window attention over each sequence's
    last ``window`` keys, ``max_seq_len`` then bounding the window's keys; ``kv_fp8``: float8_e4m3fn caches, whose
    ``k_scale`` is already in ``scale_log2`` and ``v_scale`` scales the output). ``cfg`` keys:
    ``block_n``, ``num_warps``, ``num_stages``, ``use_dot``, ``evict``, ``maxnreg`` (register cap per thread);
    ``programs`` (grid size) or ``programs_per_sm`` override the resident-slot count."""
    num_seqs, num_q_heads, head = q.shape
    num_kv_heads = k.shape[-2]
    group = num_q_heads // num_kv_heads
    assert 0 < num_seqs <= MAX_SEQS, f"the balanced decode takes 1 to {MAX_SEQS} sequences"
    head_pad = max(16, triton.next_power_of_2(head))
    use_dot = bool(cfg["use_dot"])
    group_pad = max(16, triton.next_power_of_2(group)) if use_dot else triton.next_power_of_2(group)
    block_n = int(cfg["block_n"])
    num_warps, num_stages = int(cfg["num_warps"]), int(cfg["num_stages"])
    nseq_pad = max(2, triton.next_power_of_2(num_seqs))
    pairs = num_seqs * num_kv_heads
    constexprs = dict(
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD=head,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        PAGED=paged,
        USE_DOT=use_dot,
        DOT_PREC=dot_precision(q.dtype),
        EVICT=str(cfg["evict"]),
        NSEQ_PAD=nseq_pad,
        SLIDING=window > 0,
    )
    if kv_fp8:  # only then: the bf16/fp16 kernel compiles exactly as before
        constexprs["KV_FP8"] = True

    def args(po, plse, n_slots):
        return (
            q,
            k,
            v,
            bt,
            seq_lens,
            starts if starts is not None else seq_lens,
            out,
            po,
            plse,
            scale_log2,
            num_seqs,
            num_kv_heads,
            n_slots,
            window,
            q.stride(0),
            q.stride(1),
            *kst,
            *vst,
            stride_bts,
            out.stride(0),
            out.stride(1),
        )

    launch_opts = {}
    if cfg.get("maxnreg") and not interpreting():
        launch_opts["maxnreg"] = int(cfg["maxnreg"])
    if "programs" in cfg:
        nprog = max(1, int(cfg["programs"]))
    else:
        if "programs_per_sm" in cfg:
            per_sm = int(cfg["programs_per_sm"])
        else:
            per_sm = balanced_programs(args(out, out, 1), constexprs, num_warps, num_stages, q.device, launch_opts)
        max_tiles = pairs * -(-max(int(max_seq_len), 1) // block_n)
        nprog = max(1, min(per_sm * num_sms(q.device), -(-max_tiles // MIN_TILES_PER_PROGRAM)))
    n_slots = nprog + pairs
    po = torch.empty((n_slots, group, head), dtype=torch.float32, device=q.device)
    plse = torch.empty((group, n_slots), dtype=torch.float32, device=q.device)
    fp8_args = {"v_scale": float(v_scale)} if kv_fp8 else {}
    _balanced_decode_kernel[(nprog,)](
        *args(po, plse, n_slots), num_warps=num_warps, num_stages=num_stages, **launch_opts, **constexprs, **fp8_args
    )
    group_r = triton.next_power_of_2(group)
    _balanced_reduce_kernel[(num_seqs, num_kv_heads)](
        po,
        plse,
        seq_lens,
        out,
        num_seqs,
        num_kv_heads,
        n_slots,
        nprog,
        window,
        out.stride(0),
        out.stride(1),
        GROUP=group,
        GROUP_R=group_r,
        HEAD=head,
        HEAD_PAD=head_pad,
        BLOCK_N=block_n,
        NSEQ_PAD=nseq_pad,
        CHUNK=max(1, 32 // group_r),
        SLIDING=window > 0,
        num_warps=4,
    )
    return out
