"""Helpers shared by the attention kernels: device facts, Triton options and the decode tile loop's pieces.

Host side: :func:`num_sms`, :func:`interpreting`, :func:`dot_precision`, :func:`window_size`, the TMA view rule
(:func:`tma_view_ok`, :func:`tma_desc`). Device side (``@triton.jit``, used by both the split-KV decode of
:mod:`.decode` and the stream-K decode of :mod:`.decode_balanced`): :func:`tile_blocks`, :func:`load_kv_tile`,
:func:`decode_step` and :func:`combine_partials`. Nothing here imports another module of the package.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


_SM_COUNT: dict = {}


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached per device index)."""
    if device.type != "cuda":
        return 132  # behave like an H100 so the CPU tests exercise the same choices
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: IEEE for fp32 inputs (no tf32 rounding), the default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def window_size(sliding_window: int | None) -> int:
    """The ``sliding_window`` argument of the entry points as an int: ``None`` or ``0`` is full attention (0)."""
    if sliding_window is None:
        return 0
    w = int(sliding_window)
    if w < 0:
        raise ValueError(f"sliding_window must be None or >= 0 tokens, got {sliding_window}")
    return w


def tma_view_ok(t: torch.Tensor, head: int, head_pad: int) -> bool:
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


def tma_desc(t: torch.Tensor, block_rows: int, head: int):
    """A Triton TMA descriptor over the 2-D view ``[T, H * D]`` with ``[block_rows, head]`` tiles."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, [t.shape[0], t.shape[1] * head], [t.stride(0), 1], [block_rows, head])


@triton.jit
def tile_blocks(bt_row, offs, end, BLOCK_SIZE: tl.constexpr, PAGED: tl.constexpr):
    """Physical block of each token position ``offs`` (int64), read from the block-table row ``bt_row``;
    positions at or past ``end`` read nothing. Unused (returns ``offs``) for the contiguous layout."""
    if PAGED:
        return tl.load(bt_row + offs // BLOCK_SIZE, mask=offs < end, other=0).to(tl.int64)
    else:
        return offs


@triton.jit
def load_kv_tile(
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
def decode_step(q, k, v, n_mask, m_i, l_i, acc, scale_log2, USE_DOT: tl.constexpr, DOT_PREC: tl.constexpr):
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
def combine_partials(
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
