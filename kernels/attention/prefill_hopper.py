"""Causal prefill attention for Hopper GPUs, written in Gluon with warp-group MMA.

Long file: a hot loop. One warp-specialised Gluon kernel (loader and consumers) and its launch plan are one unit.

The Triton prefill kernels in :mod:`kernels.attention.prefill` leave the softmax and the two matrix products of
each key tile in sequence: Triton 3.6 does not overlap them, whatever form the source takes (see
``reports/kernels/README.md``). This kernel issues the tensor-core work itself, in
FlashAttention-3's layout (``_prefill_ws_kernel``): a loader warp streams Q, K and V by TMA; two consumer warp
groups issue the score product ``S_j = Q K_j^T`` together with ``O += P_{j-1} V_{j-1}`` and run tile j's softmax
while the latter is still on the tensor cores, taking turns at the tensor cores; a persistent grid walks the work
items in a balanced (snake) order. ``_prefill_wgmma_kernel`` is a simpler single-partition form, kept as the
baseline the warp-specialised one is compared with (``config={"warp_specialize": False}``).

Three forms of K/V:
* contiguous (:func:`prefill_wgmma_attention`): pure prefill (no cached context) with the new tokens' K/V as
  ``[T, num_kv_heads, head_size]`` tensors, rows aligned with ``q``;
* paged (:func:`prefill_wgmma_paged_attention`): every key, cached context included, through the block table of a
  ``[num_blocks, block_size, num_kv_heads, head_size]`` cache, one TMA copy per block;
* mixed (:func:`prefill_wgmma_mixed_attention`): the cached context through the block table, the new tokens' K/V
  from contiguous tensors.

All take fp16/bf16, head sizes 64 and 128, compute capability 9.x (the paged form also float8_e4m3fn caches: the
loader stages each fp8 tile, two converter warps write fp16 stages, ``_ws_convert``, and the products run in fp16,
``_q_as_fp16``); :func:`supported`, :func:`supported_paged` and :func:`supported_mixed` say whether a call
qualifies, and :func:`kernels.attention.paged_prefill_attention` routes to them by default.
Gluon has no CPU interpreter, so the kernel runs on the GPU only (``tests/kernels/attention/test_prefill_hopper.py``);
on the CPU the module imports and reports itself unsupported, and :mod:`kernels.tools.gluon_compile` compiles it for
sm_90 without a GPU.

This file is longer than the package's others because a warp-specialised Gluon kernel is one unit: the loader
warp's and the consumer warp groups' functions share their barriers, buffers and turn-taking protocol, and the
launch plan that sets their constexprs belongs beside them.
"""

from __future__ import annotations

import torch
import triton

from kernels.attention.common import LOG2E, num_sms, tma_view_ok

try:  # Gluon is experimental: absent from older Triton releases, and its API moves between releases
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the installed triton
    gluon = None
    GLUON_ERROR = f"{type(exc).__name__}: {exc}"

# warp_specialize: two consumer warp groups and a loader warp (block_m 128, 4 + 4 + 1 warps; num_warps and
# pipeline are then unused); persistent: with it, one program per SM looping over the work items (q_buffers,
# snake and pingpong: see _prefill_ws_kernel, _item and _take_turn); fp8_stages: the depth of the fp8 staging
# rings (fp8 caches only); maxnreg caps the registers of the single-partition kernel (two programs per SM)
# The default is the fastest form on the H100 (reports/kernels/README.md), on par with cuDNN on pure prefill:
# persistent + snake + ping-pong; without ping-pong about 3% slower, round-robin items with one Q buffer or one
# program per item about 13% slower, the single-partition kernel about 40% slower
DEFAULT_CONFIG = {
    "block_m": 128,
    "block_n": 128,
    "num_warps": 8,
    "pipeline": True,
    "warp_specialize": True,
    "persistent": True,
    "q_buffers": 2,
    "snake": True,
    "pingpong": True,
    "fp8_stages": 2,
    "consumer_regs": 240,
    "loader_regs": 24,
    "maxnreg": None,
}
# the paged form's register split: 1-3% faster than 240 / 24 in 4 of 5 measured cases, and its loader
# (block-table reads, zeroing the V rows past a sequence's end) needs more than 24 registers
PAGED_DEFAULTS = {"consumer_regs": 232, "loader_regs": 40}
# fp8 caches: the loader's warp group also holds the two converter warps, which take its register count; the
# consumers give some up so that 2 x 128 x 224 + 128 x 48 fits the 65,536 registers of an SM. Shared memory holds
# two fp8 staging tiles each for K and V (so a TMA copy lands while the converters work on the previous tile) only
# with one Q buffer: 32 + 128 + 64 KiB of the 227 KiB
FP8_DEFAULTS = {"consumer_regs": 224, "loader_regs": 48, "q_buffers": 1}


def _device_dtype_scale(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> str:
    """What rules out both forms for this call ('' if nothing): Gluon, the GPU, dtypes, head size, scale."""
    if gluon is None:
        return f"gluon unavailable ({GLUON_ERROR})"
    if not q.is_cuda:
        return "not a CUDA tensor"
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs compute capability 9.x (warp-group MMA)"
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return "fp16/bf16 only"
    if q.shape[-1] not in (64, 128):
        return "head size 64 or 128 only"
    if not scale > 0:
        return "the scale is folded into exp2 and must be positive"
    return ""


def supported(q: torch.Tensor, new_key: torch.Tensor, new_value: torch.Tensor, scale: float) -> tuple[bool, str]:
    """Whether :func:`prefill_wgmma_attention` can run the call, and if not, why (one line)."""
    why = _device_dtype_scale(q, new_key, new_value, scale)
    if why:
        return False, why
    for t in (q, new_key, new_value):
        if not _tma_ok(t):
            return (
                False,
                "q/new_key/new_value must be [T, heads, head] with the last two dims contiguous, 16-byte aligned",
            )
    return True, ""


def _tma_ok(t: torch.Tensor) -> bool:
    """TMA reads the 2-D view ``[T, heads * head]`` (the Triton path's rule) of rows that do not overlap."""
    heads, head = t.shape[1], t.shape[2]
    return tma_view_ok(t, head, head) and t.stride(0) >= heads * head


def _gl_dtype(dtype: torch.dtype):
    if dtype == torch.float8_e4m3fn:
        return gl.float8e4nv
    return gl.float16 if dtype == torch.float16 else gl.bfloat16


def _descriptor(t: torch.Tensor, block_rows: int):
    """A TMA descriptor over the 2-D view ``[T, heads * head]`` with ``[block_rows, head]`` tiles."""
    total, heads, head = t.shape
    layout = gl.NVMMASharedLayout.get_default_for([block_rows, head], _gl_dtype(t.dtype))
    return TensorDescriptor(t, [total, heads * head], [t.stride(0), 1], [block_rows, head], layout)


if gluon is not None:

    @gluon.jit
    def _load_tile(desc, smem, bar, row, col, pred):
        """Start the TMA copy of one ``[rows, head]`` tile into ``smem``; ``bar`` completes when it lands."""
        mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc, [row, col], bar, smem, pred=pred)

    @gluon.jit
    def _softmax_tile(s, m_i, l_i, rows, cols, n0, scale_log2, masked, low, SLIDING: gl.constexpr):
        """Online softmax of one score tile (raw ``q . k``): returns P (fp32), the new row maximum (log2
        units), the new row sum and the factor that rescales what was accumulated before. ``SLIDING``: key n is
        visible to a row only when ``n > low`` of that row (its window's edge)."""
        if masked:  # diagonal tiles: key n0 + c is visible to row r when n0 + c <= r
            keys = (n0 + cols)[None, :]
            if SLIDING:  # `where`, not an added -inf: a freed block's rows may hold NaN, and NaN + -inf is NaN
                s = gl.where((keys <= rows[:, None]) & (keys > low[:, None]), s, float("-inf"))
            else:
                s = gl.where(keys <= rows[:, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * scale_log2)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * scale_log2 - m_new[:, None])
        l_new = l_i * alpha + gl.sum(p, axis=1)
        return p, m_new, l_new, alpha

    @gluon.jit
    def _prefill_wgmma_kernel(
        q_desc,
        k_desc,
        v_desc,
        out_ptr,
        cu_q_ptr,
        scale_log2,
        stride_ot,
        stride_oh,
        GROUP: gl.constexpr,
        HEAD: gl.constexpr,
        BLOCK_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        PIPELINE: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """Single-partition form (an A/B option, ``warp_specialize=False``; slower on the H100): one program runs
        ``BLOCK_M`` new rows of one sequence and one query head, causal over that sequence's new keys, with every
        warp issuing both loads and products. Programs along axis 0 run the longest rows first (a shorter tail)."""
        STAGES: gl.constexpr = 2  # K/V stages: each load is issued a whole tile ahead, so two suffice
        mt = gl.num_programs(0) - 1 - gl.program_id(0)
        qh = gl.program_id(1)
        seq = gl.program_id(2)
        q_start = gl.load(cu_q_ptr + seq)
        q_len = gl.load(cu_q_ptr + seq + 1) - q_start
        m0 = mt * BLOCK_M
        if m0 >= q_len:
            return
        col = (qh // GROUP) * HEAD  # this KV head's columns in the [T, heads * head] views
        dtype: gl.constexpr = q_desc.dtype

        # one layout for S and O, so their row vectors (max, sum, rescale) share a layout
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, mma)
        col_layout: gl.constexpr = gl.SliceLayout(0, mma)

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_bars.index(i), count=1)
            mbarrier.init(v_bars.index(i), count=1)

        n_tiles = gl.cdiv(gl.minimum(q_len, m0 + BLOCK_M), BLOCK_N)
        diag = m0 // BLOCK_N  # the first key tile that reaches past row m0 needs the causal mask
        _load_tile(q_desc, q_smem, q_bar, q_start + m0, qh * HEAD, True)
        for i in gl.static_range(STAGES):
            _load_tile(k_desc, k_smem.index(i), k_bars.index(i), q_start + i * BLOCK_N, col, i < n_tiles)
            _load_tile(v_desc, v_smem.index(i), v_bars.index(i), q_start + i * BLOCK_N, col, i < n_tiles)

        rows = m0 + gl.arange(0, BLOCK_M, layout=row_layout)
        cols = gl.arange(0, BLOCK_N, layout=col_layout)
        m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, row_layout)
        l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
        acc = gl.zeros([BLOCK_M, HEAD], gl.float32, mma)
        s_init = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        mbarrier.wait(q_bar, 0)

        if PIPELINE:
            # tile 0: scores and softmax only; its P.V product is issued with tile 1's scores
            mbarrier.wait(k_bars.index(0), 0)
            s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_init, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, rows, cols, 0, scale_log2, diag == 0, rows, False)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            gl.thread_barrier()  # both warp groups are done with K_0 before TMA overwrites its stage
            _load_tile(k_desc, k_smem.index(0), k_bars.index(0), q_start + STAGES * BLOCK_N, col, STAGES < n_tiles)
            for j in range(1, n_tiles):
                stage = j % STAGES
                prev = (j - 1) % STAGES
                mbarrier.wait(k_bars.index(stage), (j // STAGES) & 1)
                s = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s_init, use_acc=False, is_async=True)
                mbarrier.wait(v_bars.index(prev), ((j - 1) // STAGES) & 1)
                acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # S_j is done; P_{j-1} V_{j-1} may run on
                p, m_i, l_i, alpha = _softmax_tile(
                    s, m_i, l_i, rows, cols, j * BLOCK_N, scale_log2, j >= diag, rows, False
                )
                acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
                acc = acc * alpha[:, None]
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                gl.thread_barrier()  # K_j and V_{j-1} are consumed by both warp groups: refill their stages
                _load_tile(
                    k_desc,
                    k_smem.index(stage),
                    k_bars.index(stage),
                    q_start + (j + STAGES) * BLOCK_N,
                    col,
                    j + STAGES < n_tiles,
                )
                _load_tile(
                    v_desc, v_smem.index(prev), v_bars.index(prev), q_start + (j + 1) * BLOCK_N, col, j + 1 < n_tiles
                )
            last = (n_tiles - 1) % STAGES
            mbarrier.wait(v_bars.index(last), ((n_tiles - 1) // STAGES) & 1)
            acc = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        else:
            for j in range(n_tiles):
                stage = j % STAGES
                phase = (j // STAGES) & 1
                mbarrier.wait(k_bars.index(stage), phase)
                s = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s_init, use_acc=False, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                p, m_i, l_i, alpha = _softmax_tile(
                    s, m_i, l_i, rows, cols, j * BLOCK_N, scale_log2, j >= diag, rows, False
                )
                acc = acc * alpha[:, None]
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                mbarrier.wait(v_bars.index(stage), phase)
                acc = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
                acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
                gl.thread_barrier()
                _load_tile(
                    k_desc,
                    k_smem.index(stage),
                    k_bars.index(stage),
                    q_start + (j + STAGES) * BLOCK_N,
                    col,
                    j + STAGES < n_tiles,
                )
                _load_tile(
                    v_desc,
                    v_smem.index(stage),
                    v_bars.index(stage),
                    q_start + (j + STAGES) * BLOCK_N,
                    col,
                    j + STAGES < n_tiles,
                )

        o = acc / l_i[:, None]  # key 0 is visible to every row, so l_i > 0
        offs_d = gl.arange(0, HEAD, layout=col_layout)
        ptrs = out_ptr + (q_start + rows).to(gl.int64)[:, None] * stride_ot + qh * stride_oh + offs_d[None, :]
        gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=(rows < q_len)[:, None])

    @gluon.jit
    def _item(k, num_items, num_mt, num_q_heads, cu_q_ptr, SNAKE: gl.constexpr, BLOCK_M: gl.constexpr):
        """This program's ``k``-th work item -> (valid, first row, query head, sequence, its start, its new tokens).

        Items list the row tiles of one (sequence, head) pair together, longest (last) rows first, so the causal
        triangle's tail is short and the pair's K/V stay in L2. Program p takes item ``k * grid + p``, or with
        ``SNAKE`` ``k * grid + grid - 1 - p`` on odd rounds: plain round-robin hands a program the same row tile of
        every pair whenever the grid is a multiple of the tiles per pair, while the snake evens the work out (3%
        above the mean on the benchmark shapes, against 8-47%)."""
        g = gl.num_programs(0)
        p = gl.program_id(0)
        if SNAKE:
            if k % 2 == 1:
                p = g - 1 - p
        t = k * g + p
        valid = t < num_items
        t = gl.minimum(t, num_items - 1)
        mt = num_mt - 1 - t % num_mt
        rest = t // num_mt
        qh = rest % num_q_heads
        seq = rest // num_q_heads
        q_start = gl.load(cu_q_ptr + seq)
        q_len = gl.load(cu_q_ptr + seq + 1) - q_start
        m0 = mt * BLOCK_M
        return valid & (m0 < q_len), m0, qh, seq, q_start, q_len

    @gluon.jit
    def _take_turn(turns, HALF: gl.constexpr, g, PINGPONG: gl.constexpr):
        """Ping-pong: before its ``g``-th issue of tensor-core work, a warp group waits until the other group has
        issued its own ``g - 1``-th (group 1: ``g``-th), so one group's softmax runs under the other's products."""
        if PINGPONG:
            if HALF == 0:
                mbarrier.wait(turns.index(0), (g - 1) & 1, pred=g > 0)
            else:
                mbarrier.wait(turns.index(1), g & 1)

    @gluon.jit
    def _pass_turn(turns, HALF: gl.constexpr, PINGPONG: gl.constexpr):
        if PINGPONG:
            mbarrier.arrive(turns.index(1 - HALF), count=1)

    @gluon.jit
    def _first_key_tile(ctx, m0, window, BLOCK_N: gl.constexpr, SLIDING: gl.constexpr):
        """The first key tile of a work item whose first row is new token ``m0`` (position ``ctx + m0``): 0, or
        with ``SLIDING`` the tile holding that row's first visible key (no row of the item sees a key before it)."""
        j_lo = 0
        if SLIDING:
            j_lo = gl.maximum(ctx + m0 - window + 1, 0) // BLOCK_N
        return j_lo

    @gluon.jit
    def _key_tile(j, ctx, ctx_tiles, rows, pos, diag, m0, BLOCK_N: gl.constexpr, MIXED: gl.constexpr):
        """Key tile ``j`` of a work item -> (the index of its first key, each row's last visible key index, whether
        the tile needs the mask). Keys are numbered by position in the sequence, except with ``MIXED``: there the
        first ``ctx_tiles`` tiles hold the context (positions; the last one may run past it) and the rest hold the
        new tokens, numbered from 0 like the rows."""
        n0 = j * BLOCK_N
        limit = pos
        masked = j >= diag
        if MIXED:
            if j < ctx_tiles:
                limit = rows * 0 + (ctx - 1)
                masked = n0 + BLOCK_N > ctx
            else:
                n0 = (j - ctx_tiles) * BLOCK_N
                limit = rows
                masked = j - ctx_tiles >= m0 // BLOCK_N
        return n0, limit, masked

    @gluon.jit
    def _q_as_fp16(q, HALF_M: gl.constexpr, HEAD: gl.constexpr):
        """A consumer warp group's Q half (``[HALF_M, HEAD]`` in shared memory) as fp16, for the products with the
        fp16 K/V stages of fp8 caches: bf16 is rewritten in place (each thread stores the elements it loaded, so
        no thread overwrites another's unread ones), exact for magnitudes in fp16's normal range [2**-14, 65504]."""
        if q.dtype == gl.bfloat16:
            layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
            x = q.load(layout)
            q16 = q._reinterpret(gl.float16, [HALF_M, HEAD], q.layout)
            q16.store(x.to(gl.float16))
            fence_async_shared()  # the stores before the tensor cores read them
            gl.thread_barrier()  # and every warp of the group's before any issues the product
            return q16
        else:
            return q

    @gluon.jit
    def _ws_consumer(
        q_smem,
        k_smem,
        v_smem,
        q_ready,
        q_empty,
        k_ready,
        v_ready,
        k_empty,
        v_empty,
        turns,
        out_ptr,
        cu_q_ptr,
        ctx_ptr,
        scale_log2,
        stride_ot,
        stride_oh,
        num_mt,
        num_q_heads,
        num_items,
        rounds,
        window,
        out_scale,
        HALF: gl.constexpr,
        HEAD: gl.constexpr,
        HALF_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        STAGES: gl.constexpr,
        Q_BUFFERS: gl.constexpr,
        SNAKE: gl.constexpr,
        PINGPONG: gl.constexpr,
        HAS_CTX: gl.constexpr,
        MIXED: gl.constexpr,
        SLIDING: gl.constexpr,
        KV_FP8: gl.constexpr,
    ):
        """One warp group: rows ``HALF * HALF_M ..`` of each work item. Scores of key tile j run on the tensor
        cores together with P_{j-1} V_{j-1}; each K/V stage goes back to the loader as soon as this group's
        product that reads it is done, and the item's Q buffer once its last score product is. ``SLIDING`` (paged
        form): row r sees keys ``> pos(r) - window``; the key loop starts at :func:`_first_key_tile`."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, mma)
        col_layout: gl.constexpr = gl.SliceLayout(0, mma)
        dtype: gl.constexpr = k_smem.dtype  # of the products' operands: q's, or fp16 with fp8 caches
        cols = gl.arange(0, BLOCK_N, layout=col_layout)
        offs_d = gl.arange(0, HEAD, layout=col_layout)
        s_init = gl.zeros([HALF_M, BLOCK_N], gl.float32, mma)
        it = 0  # K/V tiles consumed so far: the position in the stage ring
        tc = 0  # work items done so far: the Q buffer and its parity
        g = 0  # tensor-core issues so far (ping-pong parity)
        for k in range(rounds):
            valid, m0, qh, seq, q_start, q_len = _item(k, num_items, num_mt, num_q_heads, cu_q_ptr, SNAKE, 2 * HALF_M)
            if valid:
                ctx = 0
                if HAS_CTX:
                    ctx = gl.load(ctx_ptr + seq)
                n_tiles = gl.cdiv(ctx + gl.minimum(q_len, m0 + 2 * HALF_M), BLOCK_N)
                ctx_tiles = 0
                if MIXED:
                    ctx_tiles = gl.cdiv(ctx, BLOCK_N)
                    n_tiles = ctx_tiles + gl.cdiv(gl.minimum(q_len, m0 + 2 * HALF_M), BLOCK_N)
                # the first key tile that reaches past the item's first row (position ctx + m0) needs the causal mask
                diag = (ctx + m0 + 1) // BLOCK_N
                rows = m0 + HALF * HALF_M + gl.arange(0, HALF_M, layout=row_layout)
                pos = ctx + rows  # the rows' positions in their sequence: key n is visible to a row when n <= pos
                low = pos - window  # and with SLIDING, when n > low
                j_lo = _first_key_tile(ctx, m0, window, BLOCK_N, SLIDING)
                # with SLIDING, tiles starting below `edge` cut the window of some row of the item (its last row
                # sees keys from ctx + m0 + 2 * HALF_M - window on) and are masked
                edge = ctx + m0 + 2 * HALF_M - window
                m_i = gl.full([HALF_M], -1.0e30, gl.float32, row_layout)
                l_i = gl.zeros([HALF_M], gl.float32, row_layout)
                acc = gl.zeros([HALF_M, HEAD], gl.float32, mma)
                qb = tc % Q_BUFFERS
                q = q_smem.index(qb * 2 + HALF)
                mbarrier.wait(q_ready.index(qb), (tc // Q_BUFFERS) & 1)
                if KV_FP8:
                    q = _q_as_fp16(q, HALF_M, HEAD)

                stage = it % STAGES
                mbarrier.wait(k_ready.index(stage), (it // STAGES) & 1)
                _take_turn(turns, HALF, g, PINGPONG)
                s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), s_init, use_acc=False, is_async=True)
                _pass_turn(turns, HALF, PINGPONG)
                g += 1
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                mbarrier.arrive(k_empty.index(stage), count=1)
                n0, limit, masked = _key_tile(j_lo, ctx, ctx_tiles, rows, pos, diag, m0, BLOCK_N, MIXED)
                if SLIDING:
                    masked = masked | (n0 < edge)
                p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, limit, cols, n0, scale_log2, masked, low, SLIDING)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                for j in range(j_lo + 1, n_tiles):
                    cur = it + j - j_lo
                    stage = cur % STAGES
                    prev = (cur - 1) % STAGES
                    mbarrier.wait(k_ready.index(stage), (cur // STAGES) & 1)
                    mbarrier.wait(v_ready.index(prev), ((cur - 1) // STAGES) & 1)
                    _take_turn(turns, HALF, g, PINGPONG)
                    s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), s_init, use_acc=False, is_async=True)
                    acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
                    _pass_turn(turns, HALF, PINGPONG)
                    g += 1
                    s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                    mbarrier.arrive(k_empty.index(stage), count=1)
                    n0, limit, masked = _key_tile(j, ctx, ctx_tiles, rows, pos, diag, m0, BLOCK_N, MIXED)
                    if SLIDING:
                        masked = masked | (n0 < edge)
                    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, limit, cols, n0, scale_log2, masked, low, SLIDING)
                    acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
                    mbarrier.arrive(v_empty.index(prev), count=1)
                    acc = acc * alpha[:, None]
                    p_op = gl.convert_layout(p.to(dtype), p_layout)
                mbarrier.arrive(q_empty.index(qb), count=1)  # no score product of this item is left
                last = it + n_tiles - j_lo - 1
                mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
                _take_turn(turns, HALF, g, PINGPONG)
                acc = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
                _pass_turn(turns, HALF, PINGPONG)
                g += 1
                acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
                mbarrier.arrive(v_empty.index(last % STAGES), count=1)
                it += n_tiles - j_lo
                tc += 1

                o = acc / l_i[:, None]  # every row sees its own key, so l_i > 0
                if KV_FP8:
                    o = o * out_scale  # V's per-tensor scale (K's is folded into scale_log2)
                ptrs = out_ptr + (q_start + rows).to(gl.int64)[:, None] * stride_ot + qh * stride_oh + offs_d[None, :]
                gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=(rows < q_len)[:, None])

    @gluon.jit
    def _load_paged_tile(
        desc,
        smem,
        bar,
        bt_row,
        n0,
        start,
        seq_len,
        col,
        BLOCK_SIZE: gl.constexpr,
        BOX: gl.constexpr,
        BLOCK_N: gl.constexpr,
    ):
        """Key positions ``n0 .. n0 + BLOCK_N - 1`` of one sequence through its block table: one TMA copy of ``BOX``
        rows per block (or per ``BOX`` rows of a larger block). Boxes wholly before ``start`` (a sliding window's
        edge: their blocks may be freed) or past the sequence copy row 0 of the cache instead of following table
        entries that are not the sequence's; callers mask or zero those rows."""
        mbarrier.expect(bar, (BLOCK_N // BOX) * desc.block_type.nbytes)
        for i in gl.static_range(BLOCK_N // BOX):
            p = n0 + i * BOX
            blk = gl.load(bt_row + p // BLOCK_SIZE, mask=(p < seq_len) & (p + BOX > start), other=0)
            tma.async_copy_global_to_shared(
                desc, [blk * BLOCK_SIZE + p % BLOCK_SIZE, col], bar, smem.slice(i * BOX, BOX)
            )

    @gluon.jit
    def _zero_rows_outside(smem, begin, end, BLOCK_N: gl.constexpr, HEAD: gl.constexpr):
        """Zero the rows of a ``[BLOCK_N, HEAD]`` shared tile before ``begin`` and from ``end`` on, 8 rows at a time
        (one warp). A cache slot that no token uses (or a freed block's) may hold anything, NaN included, and
        P = 0 times NaN is NaN in the P.V product."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [1, 1], [1, 0])
        r = gl.arange(0, 8, layout=gl.SliceLayout(1, layout))
        for c in gl.static_range(0, BLOCK_N, 8):
            if (c + 8 > end) | (c < begin):
                part = smem.slice(c, 8)
                x = part.load(layout)
                keep = ((c + r) < end) & ((c + r) >= begin)
                x = gl.where(keep[:, None], x, gl.zeros_like(x))
                part.store(x)

    @gluon.jit
    def _paged_v(
        v_desc,
        v_smem,
        v_bar,
        v_landed,
        bt_row,
        n0,
        start,
        end,
        col,
        partial,
        BLOCK_SIZE: gl.constexpr,
        BOX: gl.constexpr,
        BLOCK_N: gl.constexpr,
        HEAD: gl.constexpr,
    ):
        """A V tile through the block table, keys ``n0 ..``, of which those before ``start`` (out of every row's
        window) and from ``end`` on are not the caller's: a tile holding either edge lands on ``v_landed`` first and
        has those rows zeroed before ``v_bar`` releases it. Returns the updated count of such tiles (the parity of
        ``v_landed``)."""
        if (n0 + BLOCK_N > end) | (n0 < start):
            _load_paged_tile(v_desc, v_smem, v_landed, bt_row, n0, start, end, col, BLOCK_SIZE, BOX, BLOCK_N)
            mbarrier.wait(v_landed, partial & 1)
            _zero_rows_outside(v_smem, start - n0, end - n0, BLOCK_N, HEAD)
            fence_async_shared()  # the stores before the tensor cores' (async proxy) reads
            mbarrier.arrive(v_bar, count=1)
            partial += 1
        else:
            _load_paged_tile(v_desc, v_smem, v_bar, bt_row, n0, start, end, col, BLOCK_SIZE, BOX, BLOCK_N)
        return partial

    @gluon.jit
    def _ws_loader(
        q_desc,
        k_desc,
        v_desc,
        kn_desc,
        vn_desc,
        q_smem,
        k_smem,
        v_smem,
        q_ready,
        q_empty,
        k_ready,
        v_ready,
        k_empty,
        v_empty,
        v_landed,
        k_stage8,
        v_stage8,
        k8_ready,
        v8_ready,
        k8_empty,
        v8_empty,
        cu_q_ptr,
        ctx_ptr,
        bt_ptr,
        stride_bts,
        num_mt,
        num_q_heads,
        num_items,
        rounds,
        window,
        GROUP: gl.constexpr,
        HEAD: gl.constexpr,
        HALF_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        STAGES: gl.constexpr,
        STAGES8: gl.constexpr,
        Q_BUFFERS: gl.constexpr,
        SNAKE: gl.constexpr,
        PAGED: gl.constexpr,
        MIXED: gl.constexpr,
        BLOCK_SIZE: gl.constexpr,
        BOX: gl.constexpr,
        SLIDING: gl.constexpr,
        KV_FP8: gl.constexpr,
    ):
        """One warp: for each work item, Q's two halves into a free Q buffer, then the K and V tiles into the
        stage ring as the consumers free it. ``PAGED``: K/V through the block table, and the V tile holding the
        sequence's end has its rows past the end zeroed before the consumers see it. ``MIXED``: the context's
        tiles so (zeroed past the context), then the new tokens' from ``kn_desc``/``vn_desc``. ``SLIDING`` (paged
        form): from the tile of the item's first row's window edge on, rows before that edge zeroed in V and never
        looked up in the block table. ``KV_FP8`` (paged form): the fp8 K and V tiles go to rings of ``STAGES8``
        staging tiles (``k_stage8``/``v_stage8``), from which the converter warps (:func:`_ws_convert`) fill the
        fp16 stages."""
        it = 0
        tc = 0
        partial = 0  # paged V tiles that held a sequence's end (parity of v_landed)
        for k in range(rounds):
            valid, m0, qh, seq, q_start, q_len = _item(k, num_items, num_mt, num_q_heads, cu_q_ptr, SNAKE, 2 * HALF_M)
            if valid:
                ctx = 0
                if PAGED or MIXED:
                    ctx = gl.load(ctx_ptr + seq)
                seq_len = ctx + q_len
                bt_row = bt_ptr + seq.to(gl.int64) * stride_bts
                n_tiles = gl.cdiv(ctx + gl.minimum(q_len, m0 + 2 * HALF_M), BLOCK_N)
                ctx_tiles = 0
                if MIXED:
                    ctx_tiles = gl.cdiv(ctx, BLOCK_N)
                    n_tiles = ctx_tiles + gl.cdiv(gl.minimum(q_len, m0 + 2 * HALF_M), BLOCK_N)
                col = (qh // GROUP) * HEAD
                j_lo = _first_key_tile(ctx, m0, window, BLOCK_N, SLIDING)
                start = 0  # no row of the item sees a key before this position
                if SLIDING:
                    start = ctx + m0 - window + 1
                qb = tc % Q_BUFFERS
                mbarrier.wait(q_empty.index(qb), ((tc // Q_BUFFERS) & 1) ^ 1, pred=tc >= Q_BUFFERS)
                bar = q_ready.index(qb)
                mbarrier.expect(bar, 2 * q_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(q_desc, [q_start + m0, qh * HEAD], bar, q_smem.index(qb * 2))
                tma.async_copy_global_to_shared(
                    q_desc, [q_start + m0 + HALF_M, qh * HEAD], bar, q_smem.index(qb * 2 + 1)
                )
                for j in range(j_lo, n_tiles):
                    cur = it + j - j_lo
                    stage = cur % STAGES
                    free_phase = ((cur // STAGES) & 1) ^ 1  # the stage's previous use, released by both groups
                    n0 = j * BLOCK_N
                    if KV_FP8:  # into the staging ring once the converters have read a slot's previous contents
                        s8 = cur % STAGES8
                        free8 = ((cur // STAGES8) & 1) ^ 1
                        mbarrier.wait(k8_empty.index(s8), free8, pred=cur >= STAGES8)
                        k8_buf, k8_bar = k_stage8.index(s8), k8_ready.index(s8)
                        _load_paged_tile(
                            k_desc, k8_buf, k8_bar, bt_row, n0, start, seq_len, col, BLOCK_SIZE, BOX, BLOCK_N
                        )
                        mbarrier.wait(v8_empty.index(s8), free8, pred=cur >= STAGES8)
                        v8_buf, v8_bar = v_stage8.index(s8), v8_ready.index(s8)
                        _load_paged_tile(
                            v_desc, v8_buf, v8_bar, bt_row, n0, start, seq_len, col, BLOCK_SIZE, BOX, BLOCK_N
                        )
                    else:
                        mbarrier.wait(k_empty.index(stage), free_phase, pred=cur >= STAGES)
                        k_buf, k_bar = k_smem.index(stage), k_ready.index(stage)
                        if PAGED:
                            _load_paged_tile(
                                k_desc, k_buf, k_bar, bt_row, n0, start, seq_len, col, BLOCK_SIZE, BOX, BLOCK_N
                            )
                        elif MIXED:
                            if j < ctx_tiles:
                                _load_paged_tile(
                                    k_desc, k_buf, k_bar, bt_row, n0, 0, ctx, col, BLOCK_SIZE, BOX, BLOCK_N
                                )
                            else:
                                _load_tile(kn_desc, k_buf, k_bar, q_start + (j - ctx_tiles) * BLOCK_N, col, True)
                        else:
                            _load_tile(k_desc, k_buf, k_bar, q_start + n0, col, True)
                        mbarrier.wait(v_empty.index(stage), free_phase, pred=cur >= STAGES)
                        v_buf, v_bar = v_smem.index(stage), v_ready.index(stage)
                        if PAGED:
                            partial = _paged_v(
                                v_desc,
                                v_buf,
                                v_bar,
                                v_landed,
                                bt_row,
                                n0,
                                start,
                                seq_len,
                                col,
                                partial,
                                BLOCK_SIZE,
                                BOX,
                                BLOCK_N,
                                HEAD,
                            )
                        elif MIXED:
                            if j < ctx_tiles:
                                partial = _paged_v(
                                    v_desc,
                                    v_buf,
                                    v_bar,
                                    v_landed,
                                    bt_row,
                                    n0,
                                    0,
                                    ctx,
                                    col,
                                    partial,
                                    BLOCK_SIZE,
                                    BOX,
                                    BLOCK_N,
                                    HEAD,
                                )
                            else:
                                _load_tile(vn_desc, v_buf, v_bar, q_start + (j - ctx_tiles) * BLOCK_N, col, True)
                        else:
                            _load_tile(v_desc, v_buf, v_bar, q_start + n0, col, True)
                it += n_tiles - j_lo
                tc += 1

    @gluon.jit
    def _convert_tile(src, dst, key0, start, seq_len, MASKED: gl.constexpr, BLOCK_N: gl.constexpr):
        """One fp8 tile (``src``) into an fp16 stage (``dst``), 8 rows at a time; ``MASKED``: rows whose key
        position (``key0`` + row) is outside ``[start, seq_len)`` are zeroed."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [1, 1], [1, 0])
        r = gl.arange(0, 8, layout=gl.SliceLayout(1, layout))
        for c in gl.static_range(0, BLOCK_N, 8):
            x = src.slice(c, 8).load(layout).to(dst.dtype)  # e4m3 -> f16: one conversion per pair, exact
            if MASKED:
                key = key0 + c + r
                x = gl.where(((key >= start) & (key < seq_len))[:, None], x, gl.zeros_like(x))
            dst.slice(c, 8).store(x)

    @gluon.jit
    def _ws_convert(
        stage8,
        ready8,
        empty8,
        dst_smem,
        dst_ready,
        dst_empty,
        cu_q_ptr,
        ctx_ptr,
        num_mt,
        num_q_heads,
        num_items,
        rounds,
        window,
        IS_V: gl.constexpr,
        HEAD: gl.constexpr,
        HALF_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        STAGES: gl.constexpr,
        STAGES8: gl.constexpr,
        SNAKE: gl.constexpr,
        SLIDING: gl.constexpr,
    ):
        """One warp (``KV_FP8``): for every K (or, ``IS_V``, V) tile the loader stages in fp8 (a ring of
        ``STAGES8`` staging tiles), wait for a free fp16 stage, convert the tile into it and release both. V rows
        outside the item's keys (before the window's edge, past the sequence) are zeroed, as :func:`_paged_v`
        does: P = 0 times NaN is NaN; only tiles that reach past either end take that masked path. Walks the work
        items and key tiles in the loader's order, so ``cur`` numbers the same tiles."""
        it = 0
        for k in range(rounds):
            valid, m0, qh, seq, q_start, q_len = _item(k, num_items, num_mt, num_q_heads, cu_q_ptr, SNAKE, 2 * HALF_M)
            if valid:
                ctx = gl.load(ctx_ptr + seq)
                seq_len = ctx + q_len
                n_tiles = gl.cdiv(ctx + gl.minimum(q_len, m0 + 2 * HALF_M), BLOCK_N)
                j_lo = _first_key_tile(ctx, m0, window, BLOCK_N, SLIDING)
                start = 0
                if SLIDING:
                    start = ctx + m0 - window + 1
                for j in range(j_lo, n_tiles):
                    cur = it + j - j_lo
                    stage = cur % STAGES
                    s8 = cur % STAGES8
                    mbarrier.wait(ready8.index(s8), (cur // STAGES8) & 1)
                    mbarrier.wait(dst_empty.index(stage), ((cur // STAGES) & 1) ^ 1, pred=cur >= STAGES)
                    src = stage8.index(s8)
                    dst = dst_smem.index(stage)
                    n0 = j * BLOCK_N
                    if IS_V:
                        if (n0 < start) | (n0 + BLOCK_N > seq_len):
                            _convert_tile(src, dst, n0, start, seq_len, True, BLOCK_N)
                        else:
                            _convert_tile(src, dst, n0, start, seq_len, False, BLOCK_N)
                    else:
                        _convert_tile(src, dst, n0, start, seq_len, False, BLOCK_N)
                    fence_async_shared()  # the stores before the tensor cores' and the next TMA copy's accesses
                    mbarrier.arrive(empty8.index(s8), count=1)
                    mbarrier.arrive(dst_ready.index(stage), count=1)
                it += n_tiles - j_lo

    @gluon.jit
    def _prefill_ws_kernel(
        q_desc,
        k_desc,
        v_desc,
        kn_desc,
        vn_desc,
        out_ptr,
        cu_q_ptr,
        ctx_ptr,
        bt_ptr,
        stride_bts,
        scale_log2,
        stride_ot,
        stride_oh,
        num_mt,
        num_q_heads,
        num_items,
        rounds,
        window,
        out_scale,
        GROUP: gl.constexpr,
        HEAD: gl.constexpr,
        BLOCK_N: gl.constexpr,
        Q_BUFFERS: gl.constexpr,
        SNAKE: gl.constexpr,
        PINGPONG: gl.constexpr,
        PAGED: gl.constexpr,
        MIXED: gl.constexpr,
        BLOCK_SIZE: gl.constexpr,
        BOX: gl.constexpr,
        SLIDING: gl.constexpr,
        KV_FP8: gl.constexpr,
        STAGES8: gl.constexpr,
        CONSUMER_REGS: gl.constexpr,
        LOADER_REGS: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """Warp-specialised form (FlashAttention-3's layout): two consumer warp groups of 64 rows each share the
        K/V stages of a 128-row work item, and one loader warp issues the TMA copies. A grid of one program per
        item runs each once; a persistent grid (one program per SM, ``rounds`` items each) lets the loader fetch
        the next item's Q (``Q_BUFFERS`` = 2) and K/V while the consumers finish the last one. ``PAGED``: keys at
        positions ``0 .. context + new - 1`` come through the block table from the paged cache (``BOX``-row TMA
        copies of ``BLOCK_SIZE``-token blocks), and new row i sits at position ``context + i``. ``MIXED``: the
        context through the block table, the new tokens' K/V from ``kn_desc``/``vn_desc`` (``[T, kv_heads * head]``,
        rows aligned with q). ``SLIDING`` (paged form only): sliding-window attention over ``window`` keys.
        ``KV_FP8`` (paged form only): float8_e4m3fn caches; the loader stages each K and V tile in fp8 and two
        converter warps (:func:`_ws_convert`) write the fp16 stages the consumers multiply with (K's scale folded into
        ``scale_log2``, V's ``out_scale`` applied to the output)."""
        STAGES: gl.constexpr = 2
        HALF_M: gl.constexpr = 64
        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [2 * Q_BUFFERS, HALF_M, HEAD], q_desc.layout)
        if KV_FP8:  # fp16 stages in Q's swizzle (the descriptors' is fp8's); a ring of fp8 staging tiles each for K, V
            k_smem = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_N, HEAD], q_desc.layout)
            v_smem = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_N, HEAD], q_desc.layout)
            k_stage8 = gl.allocate_shared_memory(k_desc.dtype, [STAGES8, BLOCK_N, HEAD], k_desc.layout)
            v_stage8 = gl.allocate_shared_memory(v_desc.dtype, [STAGES8, BLOCK_N, HEAD], v_desc.layout)
        else:
            k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], k_desc.layout)
            v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], v_desc.layout)
            k_stage8 = k_smem  # unused
            v_stage8 = v_smem
        q_ready = gl.allocate_shared_memory(gl.int64, [Q_BUFFERS, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [Q_BUFFERS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        v_landed = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(v_landed, count=1)
        k8_ready = gl.allocate_shared_memory(gl.int64, [STAGES8, 1], mbarrier.MBarrierLayout())
        v8_ready = gl.allocate_shared_memory(gl.int64, [STAGES8, 1], mbarrier.MBarrierLayout())
        k8_empty = gl.allocate_shared_memory(gl.int64, [STAGES8, 1], mbarrier.MBarrierLayout())
        v8_empty = gl.allocate_shared_memory(gl.int64, [STAGES8, 1], mbarrier.MBarrierLayout())
        if KV_FP8:
            for i in gl.static_range(STAGES8):
                mbarrier.init(k8_ready.index(i), count=1)
                mbarrier.init(v8_ready.index(i), count=1)
                mbarrier.init(k8_empty.index(i), count=1)
                mbarrier.init(v8_empty.index(i), count=1)
        for i in gl.static_range(Q_BUFFERS):
            mbarrier.init(q_ready.index(i), count=1)
            mbarrier.init(q_empty.index(i), count=2)  # one arrival per consumer warp group
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)
            mbarrier.init(v_empty.index(i), count=2)
        for i in gl.static_range(2):
            mbarrier.init(turns.index(i), count=1)
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        HAS_CTX: gl.constexpr = PAGED or MIXED
        # Deliberate copy: the two calls list the same three partitions (the fp8 one adds the two converters). Their
        # arguments are written out in each: packed into a tuple variable they lose their constexpr-ness and the
        # kernel no longer compiles (tests/kernels/tools/test_gluon_compile.py compiles both).
        if KV_FP8:  # two more one-warp workers: the converters of K and V (the loader's register count)
            gl.warp_specialize(
                [
                    (
                        _ws_consumer,
                        (
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            turns,
                            out_ptr,
                            cu_q_ptr,
                            ctx_ptr,
                            scale_log2,
                            stride_ot,
                            stride_oh,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            out_scale,
                            FIRST,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            Q_BUFFERS,
                            SNAKE,
                            PINGPONG,
                            HAS_CTX,
                            MIXED,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                    (
                        _ws_consumer,
                        (
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            turns,
                            out_ptr,
                            cu_q_ptr,
                            ctx_ptr,
                            scale_log2,
                            stride_ot,
                            stride_oh,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            out_scale,
                            SECOND,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            Q_BUFFERS,
                            SNAKE,
                            PINGPONG,
                            HAS_CTX,
                            MIXED,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                    (
                        _ws_loader,
                        (
                            q_desc,
                            k_desc,
                            v_desc,
                            kn_desc,
                            vn_desc,
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            v_landed,
                            k_stage8,
                            v_stage8,
                            k8_ready,
                            v8_ready,
                            k8_empty,
                            v8_empty,
                            cu_q_ptr,
                            ctx_ptr,
                            bt_ptr,
                            stride_bts,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            GROUP,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            STAGES8,
                            Q_BUFFERS,
                            SNAKE,
                            PAGED,
                            MIXED,
                            BLOCK_SIZE,
                            BOX,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                    (
                        _ws_convert,
                        (
                            k_stage8,
                            k8_ready,
                            k8_empty,
                            k_smem,
                            k_ready,
                            k_empty,
                            cu_q_ptr,
                            ctx_ptr,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            False,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            STAGES8,
                            SNAKE,
                            SLIDING,
                        ),
                    ),
                    (
                        _ws_convert,
                        (
                            v_stage8,
                            v8_ready,
                            v8_empty,
                            v_smem,
                            v_ready,
                            v_empty,
                            cu_q_ptr,
                            ctx_ptr,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            True,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            STAGES8,
                            SNAKE,
                            SLIDING,
                        ),
                    ),
                ],
                [4, 1, 1, 1],
                [CONSUMER_REGS, LOADER_REGS, LOADER_REGS, LOADER_REGS],
            )
        else:
            gl.warp_specialize(
                [
                    (
                        _ws_consumer,
                        (
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            turns,
                            out_ptr,
                            cu_q_ptr,
                            ctx_ptr,
                            scale_log2,
                            stride_ot,
                            stride_oh,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            out_scale,
                            FIRST,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            Q_BUFFERS,
                            SNAKE,
                            PINGPONG,
                            HAS_CTX,
                            MIXED,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                    (
                        _ws_consumer,
                        (
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            turns,
                            out_ptr,
                            cu_q_ptr,
                            ctx_ptr,
                            scale_log2,
                            stride_ot,
                            stride_oh,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            out_scale,
                            SECOND,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            Q_BUFFERS,
                            SNAKE,
                            PINGPONG,
                            HAS_CTX,
                            MIXED,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                    (
                        _ws_loader,
                        (
                            q_desc,
                            k_desc,
                            v_desc,
                            kn_desc,
                            vn_desc,
                            q_smem,
                            k_smem,
                            v_smem,
                            q_ready,
                            q_empty,
                            k_ready,
                            v_ready,
                            k_empty,
                            v_empty,
                            v_landed,
                            k_stage8,
                            v_stage8,
                            k8_ready,
                            v8_ready,
                            k8_empty,
                            v8_empty,
                            cu_q_ptr,
                            ctx_ptr,
                            bt_ptr,
                            stride_bts,
                            num_mt,
                            num_q_heads,
                            num_items,
                            rounds,
                            window,
                            GROUP,
                            HEAD,
                            HALF_M,
                            BLOCK_N,
                            STAGES,
                            STAGES8,
                            Q_BUFFERS,
                            SNAKE,
                            PAGED,
                            MIXED,
                            BLOCK_SIZE,
                            BOX,
                            SLIDING,
                            KV_FP8,
                        ),
                    ),
                ],
                [4, 1],
                [CONSUMER_REGS, LOADER_REGS],
            )


def supported_paged(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float, config: dict | None = None
) -> tuple[bool, str]:
    """Whether :func:`prefill_wgmma_paged_attention` can run the call, and if not, why (one line). float8_e4m3fn
    caches (fp8 KV) qualify with fp16/bf16 q."""
    if k_cache.dtype == v_cache.dtype == torch.float8_e4m3fn:
        why = _device_dtype_scale(q, q, q, scale)  # q's dtype, the GPU and the scale; the caches are fp8
    else:
        why = _device_dtype_scale(q, k_cache, v_cache, scale)
    if why:
        return False, why
    head = q.shape[-1]
    if config and not {**DEFAULT_CONFIG, **config}["warp_specialize"]:
        return False, "the paged form is warp-specialised only"
    block_n = min(int({**DEFAULT_CONFIG, **(config or {})}["block_n"]), head)
    block_size = k_cache.shape[1]
    if (
        block_size % 8
        or (block_size < block_n and block_n % block_size)
        or (block_size > block_n and block_size % block_n)
    ):
        return (
            False,
            f"block size {block_size}: TMA copies whole blocks (a multiple of 8 dividing {block_n}, or a "
            f"multiple of {block_n})",
        )
    if not _tma_ok(q):
        return False, "q must be [T, heads, head] with the last two dims contiguous, 16-byte aligned"
    for cache in (k_cache, v_cache):
        nb, bs, heads, hd = cache.shape
        if cache.stride() != (bs * heads * hd, heads * hd, hd, 1) or cache.data_ptr() % 16:
            return False, "the caches must be contiguous [num_blocks, block_size, kv_heads, head], 16-byte aligned"
    return True, ""


def prefill_wgmma_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    config: dict | None = None,
    sliding_window: int = 0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """:func:`kernels.attention.paged_prefill_attention`'s contract (every key, the new tokens' included,
    read through the block table at positions ``0 .. context_lens[s] + new_len - 1``) on the warp-specialised
    kernel. Cache slots past a sequence's end may hold anything, NaN included. ``sliding_window > 0``: new token
    ``i`` (position ``p = context_lens[s] + i``) sees keys ``p - W < k <= p``; table entries of blocks wholly
    before the first new token's window are never read (a freed block's placeholder may stand there). float8_e4m3fn
    caches: keys are ``k_cache * k_scale`` and values ``v_cache * v_scale`` (converted to q's dtype in shared memory
    by two converter warps, so the tensor cores see bf16/fp16 as without fp8)."""
    return _run(
        "prefill_wgmma_paged_attention",
        supported_paged(q, k_cache, v_cache, scale, config),
        q,
        cu_seqlens_q,
        scale,
        max_query_len,
        out,
        config,
        paged=(k_cache, v_cache, block_tables, context_lens),
        window=int(sliding_window or 0),
        k_scale=float(k_scale),
        v_scale=float(v_scale),
    )


def supported_mixed(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    new_key: torch.Tensor,
    new_value: torch.Tensor,
    scale: float,
    config: dict | None = None,
) -> tuple[bool, str]:
    """Whether :func:`prefill_wgmma_mixed_attention` can run the call, and if not, why (one line)."""
    ok, why = supported_paged(q, k_cache, v_cache, scale, config)
    if not ok:
        return ok, why
    for t in (new_key, new_value):
        if t.dtype != q.dtype or not _tma_ok(t):
            return False, "new_key/new_value must be [T, kv_heads, head] in q's dtype, the last two dims contiguous"
    return True, ""


def prefill_wgmma_mixed_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    new_key: torch.Tensor,
    new_value: torch.Tensor,
    max_query_len: int,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """:func:`kernels.attention.paged_prefill_attention` with ``new_key``/``new_value`` and cached context:
    keys at positions ``< context_lens[s]`` through the block table (the cache need not hold the new tokens), the
    new tokens' from ``new_key``/``new_value`` (rows aligned with ``q``)."""
    return _run(
        "prefill_wgmma_mixed_attention",
        supported_mixed(q, k_cache, v_cache, new_key, new_value, scale, config),
        q,
        cu_seqlens_q,
        scale,
        max_query_len,
        out,
        config,
        new_kv=(new_key, new_value),
        paged=(k_cache, v_cache, block_tables, context_lens),
    )


def prefill_wgmma_attention(
    q: torch.Tensor,
    new_key: torch.Tensor,
    new_value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Causal self-attention of the new tokens of each sequence (no cached context).

    Args:
        q: ``[T, num_q_heads, head_size]``; sequence ``s`` owns rows ``cu_seqlens_q[s] : cu_seqlens_q[s + 1]``.
        new_key, new_value: ``[T, num_kv_heads, head_size]``, rows aligned with ``q``.
        cu_seqlens_q: int32 ``[num_seqs + 1]``.
        scale: softmax scale (> 0).
        max_query_len: the longest sequence (tokens); sets the grid.
        out: optional ``[T, num_q_heads, head_size]`` output.
        config: overrides of :data:`DEFAULT_CONFIG`.

    Returns:
        ``out``; rows of each sequence hold softmax(q k^T * scale, causal) v.
    """
    return _run(
        "prefill_wgmma_attention",
        supported(q, new_key, new_value, scale),
        q,
        cu_seqlens_q,
        scale,
        max_query_len,
        out,
        config,
        new_kv=(new_key, new_value),
    )


def _run(name: str, check: tuple[bool, str], q, cu_seqlens_q, scale, max_query_len, out, config, **kv):
    """The entry points' common part: refuse with ``check``'s reason, then one launch (none for an empty batch)."""
    ok, why = check
    if not ok:
        raise ValueError(f"{name}: {why}")
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0 or cu_seqlens_q.shape[0] <= 1 or max_query_len <= 0:
        return out
    kernel, grid, args, kwargs = launch_plan(
        q, cu_seqlens_q, scale, int(max_query_len), out, config, num_sms(q.device), **kv
    )
    kernel[grid](*args, **kwargs)
    return out


def _cache_descriptor(cache: torch.Tensor, box_rows: int):
    """A TMA descriptor over the cache as ``[num_blocks * block_size, kv_heads * head]`` with ``[box_rows, head]``
    boxes."""
    nb, bs, heads, head = cache.shape
    layout = gl.NVMMASharedLayout.get_default_for([box_rows, head], _gl_dtype(cache.dtype))
    return TensorDescriptor(cache, [nb * bs, heads * head], [heads * head, 1], [box_rows, head], layout)


def launch_plan(
    q,
    cu_seqlens_q,
    scale,
    max_query_len,
    out,
    config,
    num_sms,
    *,
    new_kv=None,
    paged=None,
    window: int = 0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
):
    """(kernel, grid, positional args, keyword args) of one launch, with K/V ``new_kv = (new_key, new_value)``,
    ``paged = (k_cache, v_cache, block_tables, context_lens)``, or both (the mixed form: context through the
    table, new tokens from ``new_kv``); ``window > 0``: sliding-window attention (the paged form only); fp8 caches
    with ``k_scale``/``v_scale`` (the paged form only). Shared by
    the calls and by :func:`kernels.tools.gluon_compile.compile_prefill`, which compiles the same launch without a
    GPU."""
    total, num_q_heads, head = q.shape
    num_kv_heads = (new_kv[0] if new_kv is not None else paged[0]).shape[-2]
    mixed = new_kv is not None and paged is not None
    if window and (paged is None or mixed):
        raise ValueError("prefill_wgmma: a sliding window needs the paged form (every key through the block table)")
    kv_fp8 = paged is not None and paged[0].dtype == torch.float8_e4m3fn
    if kv_fp8 and mixed:
        raise ValueError("prefill_wgmma: fp8 caches need the paged form (every key through the block table)")
    if new_kv is not None:
        assert new_kv[0].shape == new_kv[1].shape == (total, num_kv_heads, head)
    assert num_q_heads % num_kv_heads == 0
    cfg = {**DEFAULT_CONFIG, **(PAGED_DEFAULTS if paged is not None else {}), **(FP8_DEFAULTS if kv_fp8 else {})}
    cfg["block_n"] = min(cfg["block_n"], head)  # one MMA layout serves S and O: block_n must divide the head
    cfg.update({k: v for k, v in (config or {}).items() if k in DEFAULT_CONFIG})
    block_m, block_n, num_warps = int(cfg["block_m"]), int(cfg["block_n"]), int(cfg["num_warps"])
    if kv_fp8 and (int(cfg["fp8_stages"]) < 1 or int(cfg["q_buffers"]) + int(cfg["fp8_stages"]) > 3):
        raise ValueError(
            f"prefill_wgmma: fp8 caches need fp8_stages >= 1 and q_buffers + fp8_stages <= 3 (the Q buffers, the "
            f"fp16 stages and the fp8 staging tiles share 227 KiB of shared memory), got {cfg}"
        )
    if cfg["warp_specialize"]:
        block_m, num_warps = 128, 8
    if block_m % block_n or head % block_n or block_m != 16 * num_warps:
        raise ValueError(
            f"prefill_wgmma_attention: need block_m = 16 * num_warps and block_n dividing block_m and "
            f"the head size, got {cfg}"
        )
    num_seqs = cu_seqlens_q.shape[0] - 1
    num_mt = triton.cdiv(max_query_len, block_m)
    common = (out, cu_seqlens_q)
    if cfg["warp_specialize"]:
        num_items = num_mt * num_q_heads * num_seqs
        programs = min(num_items, num_sms) if cfg["persistent"] else num_items
        new_descs = kv_descs = None
        if new_kv is not None:
            new_descs = (_descriptor(new_kv[0], block_n), _descriptor(new_kv[1], block_n))
        if paged is not None:
            k_cache, v_cache, block_tables, context_lens = paged
            block_size = k_cache.shape[1]
            box = min(block_size, block_n)
            kv_descs = (_cache_descriptor(k_cache, box), _cache_descriptor(v_cache, box))
            paged_args = (context_lens, block_tables, block_tables.stride(0))
        else:
            block_size = box = block_n
            paged_args = (cu_seqlens_q, cu_seqlens_q, 0)  # unused
        kv_descs = kv_descs or new_descs  # the unused pair of descriptors is a copy of the used one
        new_descs = new_descs or kv_descs
        args = (
            _descriptor(q, block_m // 2),
            *kv_descs,
            *new_descs,
            *common,
            *paged_args,
            float(scale) * LOG2E * (float(k_scale) if kv_fp8 else 1.0),
            out.stride(0),
            out.stride(1),
            num_mt,
            num_q_heads,
            num_items,
            triton.cdiv(num_items, programs),
            int(window),
            float(v_scale) if kv_fp8 else 1.0,
        )
        kwargs = dict(
            GROUP=num_q_heads // num_kv_heads,
            HEAD=head,
            BLOCK_N=block_n,
            Q_BUFFERS=int(cfg["q_buffers"]),
            SNAKE=bool(cfg["snake"]),
            PINGPONG=bool(cfg["pingpong"]),
            PAGED=paged is not None and not mixed,
            MIXED=mixed,
            BLOCK_SIZE=block_size,
            BOX=box,
            SLIDING=window > 0,
            KV_FP8=kv_fp8,
            STAGES8=int(cfg["fp8_stages"]),
            CONSUMER_REGS=int(cfg["consumer_regs"]),
            LOADER_REGS=int(cfg["loader_regs"]),
            num_warps=4,
        )
        return _prefill_ws_kernel, (programs,), args, kwargs
    if paged is not None:
        raise ValueError("prefill_wgmma_paged_attention: the paged form is warp-specialised only")
    args = (
        _descriptor(q, block_m),
        _descriptor(new_kv[0], block_n),
        _descriptor(new_kv[1], block_n),
        *common,
        float(scale) * LOG2E,
        out.stride(0),
        out.stride(1),
    )
    kwargs = dict(
        GROUP=num_q_heads // num_kv_heads,
        HEAD=head,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PIPELINE=bool(cfg["pipeline"]),
        num_warps=num_warps,
    )
    if cfg["maxnreg"]:
        kwargs["maxnreg"] = int(cfg["maxnreg"])
    return _prefill_wgmma_kernel, (num_mt, num_q_heads, num_seqs), args, kwargs


__all__ = [
    "prefill_wgmma_attention",
    "prefill_wgmma_paged_attention",
    "prefill_wgmma_mixed_attention",
    "supported",
    "supported_paged",
    "supported_mixed",
    "DEFAULT_CONFIG",
]
