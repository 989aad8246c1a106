"""Triton kernels that write into and copy within the paged KV cache.

* :func:`write_kv` - store new K/V rows into the slots of a slot mapping
  (``slot = block * block_size + offset``); negative slots are padding and
  are skipped.
* :func:`copy_blocks` - copy-on-write: for every cache (every layer, K and V)
  and every ``(src, dst)`` pair, ``cache[dst] = cache[src]``, in one launch.

fp8 KV cache (vLLM's ``kv_cache_dtype="fp8_e4m3"``): the caches are ``torch.float8_e4m3fn`` with one float scale for
K and one for V (per tensor). :func:`write_kv` stores ``round_e4m3(key / k_scale)`` (fp32 IEEE division, rounding to
nearest even, saturating to +-448); the attention kernels read ``key = cache * k_scale``. :func:`check_kv_cache` is the
host-side check every entry point shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

FP8_DTYPE = torch.float8_e4m3fn
FP8_MIN_CAPABILITY = (8, 9)  # fp8 conversions in Triton need Ada (8.9) or Hopper (9.0) and later

# --------------------------------------------------------------------------------------------------------------------
# fp8 KV: the host-side check
# --------------------------------------------------------------------------------------------------------------------


_CAPABILITY: dict = {}


def _capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA ``device`` (cached per device index: the check runs on every call); None for the
    CPU (the Triton interpreter converts fp8 in software)."""
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CAPABILITY:
        _CAPABILITY[idx] = tuple(torch.cuda.get_device_capability(idx))
    return _CAPABILITY[idx]


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: float, v_scale: float) -> bool:
    """Whether the caches are fp8 (``float8_e4m3fn``), after checking the call: both caches fp8 or neither, other
    fp8 formats refused, scales finite and positive for fp8 and exactly 1.0 otherwise, and a GPU of compute capability
    at least 8.9. Raises ``ValueError`` naming what is wrong."""
    fp8 = [t.dtype == FP8_DTYPE for t in (k_cache, v_cache)]
    for t in (k_cache, v_cache):
        if t.dtype != FP8_DTYPE and t.element_size() == 1 and t.is_floating_point():
            raise ValueError(f"fp8 KV caches must be torch.float8_e4m3fn (vLLM's fp8_e4m3), got {t.dtype}")
    if not any(fp8):
        if float(k_scale) != 1.0 or float(v_scale) != 1.0:
            raise ValueError(
                f"k_scale/v_scale apply to float8_e4m3fn caches only; a {k_cache.dtype} cache needs 1.0, "
                f"got {k_scale}, {v_scale}"
            )
        return False
    if not all(fp8):
        raise ValueError(
            f"the K and V caches must both be float8_e4m3fn or neither, got {k_cache.dtype} and {v_cache.dtype}"
        )
    for name, sc in (("k_scale", k_scale), ("v_scale", v_scale)):
        sc = float(sc)
        if not (math.isfinite(sc) and sc > 0.0):
            raise ValueError(f"{name} must be a finite positive float for an fp8 KV cache, got {sc}")
    cap = _capability(k_cache.device)
    if cap is not None and tuple(cap) < FP8_MIN_CAPABILITY:
        raise ValueError(
            f"a float8_e4m3fn KV cache needs a GPU of compute capability >= "
            f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Ada, Hopper or later); this one is {cap[0]}.{cap[1]}"
        )
    return True


@triton.jit
def _e4m3_bits(x, scale):
    """The float8_e4m3fn byte (int32, 0..255) of ``x / scale``: fp32 x, IEEE division, round to nearest even,
    saturated to +-448 (e4m3fn's largest finite value); NaN gives the NaN byte 0x7F (its sign is not kept).

    Integer arithmetic on the fp32 bits instead of ``.to(tl.float8e4nv)``: the result is the same as the GPU's
    ``cvt.rn.satfinite``, and the Triton interpreter, whose fp32-to-fp8 conversion drops the rounding carry (1.96
    becomes 1.0), rounds ties away from zero and mis-rounds subnormals, runs the same code.
    """
    y = tl.div_rn(x, scale)
    nan = y != y
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    e = mag >> 23  # fp32 biased exponent; e4m3 normals are 2**-6 and up: e >= 121
    # normal: keep 3 mantissa bits, round half to even (the carry runs into the exponent), rebias 127 -> 7
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal: a count of 2**-9 (8 of them is the smallest normal, whose byte is 8 too), round half to even
    m = (mag & 0x7FFFFF) | 0x800000  # value = m * 2**(e - 150); zero and fp32 subnormals round to 0 below
    sh = tl.minimum(141 - e, 25)
    sub = (m + (1 << (sh - 1)) - 1 + ((m >> sh) & 1)) >> sh
    byte = tl.where(e >= 121, normal, sub) | sign
    return tl.where(nan, 0x7F, byte)


# --------------------------------------------------------------------------------------
# write_kv
# --------------------------------------------------------------------------------------


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    kc_ptr,
    vc_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kct,
    stride_kch,
    stride_vcb,
    stride_vct,
    stride_vch,
    NUM_HEADS: tl.constexpr,
    HEAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    k_scale=1.0,
    v_scale=1.0,
    KV_FP8: tl.constexpr = False,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    mask = (offs_h < NUM_HEADS)[:, None] & (offs_d < HEAD)[None, :]
    k = tl.load(key_ptr + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(value_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    kdst = kc_ptr + blk * stride_kcb + off * stride_kct + offs_h[:, None] * stride_kch + offs_d[None, :]
    vdst = vc_ptr + blk * stride_vcb + off * stride_vct + offs_h[:, None] * stride_vch + offs_d[None, :]
    if KV_FP8:  # the caches are passed as uint8 views: store the e4m3 bytes computed here
        tl.store(kdst, _e4m3_bits(k.to(tl.float32), k_scale).to(tl.uint8), mask=mask)
        tl.store(vdst, _e4m3_bits(v.to(tl.float32), v_scale).to(tl.uint8), mask=mask)
    else:
        tl.store(kdst, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vdst, v.to(vc_ptr.dtype.element_ty), mask=mask)


def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Store ``key``/``value`` rows into the paged caches, in place.

    Args:
        key, value: ``[num_tokens, num_kv_heads, head_size]`` (head_size axis contiguous).
        k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``
            (head_size axis contiguous); values are cast to the cache dtype.
        slot_mapping: int32 or int64 ``[num_tokens]``; token ``t`` goes to block
            ``slot // block_size``, offset ``slot % block_size``.  Slots ``< 0``
            are padding and nothing is written for them.  Non-negative slots must
            be distinct and ``< num_blocks * block_size``.
        k_scale, v_scale: per-tensor scales (dimensionless) of ``float8_e4m3fn`` caches: the cache stores
            ``key / k_scale`` (fp32 division) rounded to nearest even e4m3 and saturated to +-448 (NaN stays NaN).
            Must be finite and positive for fp8 caches and 1.0 for others (``ValueError`` otherwise).
    """
    fp8 = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    assert key.dim() == 3 and key.shape == value.shape
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape
    num_tokens, num_heads, head = key.shape
    assert k_cache.shape[2] == num_heads and k_cache.shape[3] == head
    assert slot_mapping.shape[0] == num_tokens and slot_mapping.dtype in (torch.int32, torch.int64)
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    slot_mapping = slot_mapping.contiguous()
    if num_tokens == 0:
        return
    heads_pad = triton.next_power_of_2(num_heads)
    head_pad = triton.next_power_of_2(head)
    nelem = heads_pad * head_pad
    num_warps = 1 if nelem <= 1024 else (2 if nelem <= 2048 else 4)
    fp8_args = {}
    if fp8:
        # the kernel computes the e4m3 bytes itself and stores them through uint8 views (same strides)
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        fp8_args = dict(k_scale=float(k_scale), v_scale=float(v_scale), KV_FP8=True)
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        NUM_HEADS=num_heads,
        HEAD=head,
        HEADS_PAD=heads_pad,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=k_cache.shape[1],
        num_warps=num_warps,
        **fp8_args,
    )


# --------------------------------------------------------------------------------------
# copy_blocks
# --------------------------------------------------------------------------------------


@triton.jit
def _copy_blocks_kernel(
    base_ptr,
    cache_off_ptr,
    map_ptr,
    stride_block,
    block_numel,
    CHUNK: tl.constexpr,
    CHUNKS_PER_PROG: tl.constexpr,
):
    pair = tl.program_id(0)
    c = tl.program_id(1)
    piece = tl.program_id(2)
    src = tl.load(map_ptr + 2 * pair).to(tl.int64)
    dst = tl.load(map_ptr + 2 * pair + 1).to(tl.int64)
    cache_off = tl.load(cache_off_ptr + c)
    src_base = base_ptr + cache_off + src * stride_block
    dst_base = base_ptr + cache_off + dst * stride_block
    offs = tl.arange(0, CHUNK)
    for i in range(CHUNKS_PER_PROG):
        o = (piece * CHUNKS_PER_PROG + i).to(tl.int64) * CHUNK + offs
        m = o < block_numel
        x = tl.load(src_base + o, mask=m)
        tl.store(dst_base + o, x, mask=m)


def _flatten(caches) -> list:
    out = []
    for c in caches:
        if isinstance(c, torch.Tensor):
            out.append(c)
        else:
            out.extend(_flatten(c))
    return out


# per-layer cache lists are usually the same from call to call: keep their offset table on the
# device (no host-to-device copy per call, so a warmed-up call can be captured in a CUDA graph)
_OFFSETS_CACHE: dict = {}


def copy_blocks(caches: torch.Tensor | Sequence, block_mapping: torch.Tensor, *, block_dim: int = 1) -> None:
    """Copy whole blocks, ``cache[dst] = cache[src]``, for every cache, in one launch.

    Args:
        caches: either
            * a list (or tuple, nested allowed, e.g. ``[(k0, v0), (k1, v1), ...]``)
              of per-layer caches, each ``[num_blocks, *block_shape]``, all with the
              same shape, strides, dtype and device, each block contiguous; or
            * one stacked tensor whose block axis is ``block_dim`` (default 1:
              ``[num_caches, num_blocks, *block_shape]``; e.g. ``block_dim=2`` for
              ``[num_layers, 2, num_blocks, block_size, num_kv_heads, head_size]``);
              the axes before ``block_dim`` must be flattenable to one stride and
              each block contiguous.
        block_mapping: int64 (int32 accepted) ``[n, 2]`` rows of ``(src, dst)``
            physical block numbers.  Destinations must be distinct and must not
            also be sources in the same call (the copies run in parallel).
    """
    if block_mapping.numel() == 0:
        return
    assert block_mapping.dim() == 2 and block_mapping.shape[1] == 2
    block_mapping = block_mapping.to(torch.int64).contiguous()  # expected on the caches' device
    if isinstance(caches, torch.Tensor):
        t = caches
        assert 0 <= block_dim < t.dim()
        lead = t.shape[:block_dim]
        n_caches = 1
        for s in lead:
            n_caches *= s
        try:
            flat = t.view(n_caches, *t.shape[block_dim:]) if block_dim > 0 else t.unsqueeze(0)
        except RuntimeError as e:  # leading axes not flattenable
            raise ValueError("copy_blocks: leading axes of the stacked cache must be flattenable") from e
        base = flat
        cache_stride = flat.stride(0) if n_caches > 1 else 0
        offsets = torch.arange(n_caches, dtype=torch.int64, device=t.device) * cache_stride
        per_cache = flat[0]
    else:
        lst = _flatten(caches)
        if not lst:
            return
        per_cache = lst[0]
        for c in lst:
            assert c.shape == per_cache.shape and c.stride() == per_cache.stride(), "caches must match"
            assert c.dtype == per_cache.dtype and c.device == per_cache.device
        item = per_cache.element_size()
        base = min(lst, key=lambda c: c.data_ptr())
        key = (per_cache.device, item, tuple(c.data_ptr() for c in lst))
        offsets = _OFFSETS_CACHE.get(key)
        if offsets is None:
            diffs = [c.data_ptr() - base.data_ptr() for c in lst]
            assert all(d % item == 0 for d in diffs), "caches must be aligned to their element size"
            offsets = torch.tensor([d // item for d in diffs], dtype=torch.int64).to(per_cache.device)
            if len(_OFFSETS_CACHE) > 64:
                _OFFSETS_CACHE.clear()
            _OFFSETS_CACHE[key] = offsets
        n_caches = len(lst)
    block_shape = per_cache.shape[1:]
    block_numel = 1
    for s in block_shape:
        block_numel *= s
    # each block must be one contiguous run of memory
    expect = 1
    for size, stride in reversed(list(zip(block_shape, per_cache.stride()[1:]))):
        assert size == 1 or stride == expect, "copy_blocks: each block must be contiguous"
        expect *= size
    chunk = min(4096, triton.next_power_of_2(block_numel))
    n_chunks = triton.cdiv(block_numel, chunk)
    per_prog = 1 if n_chunks <= 4 else 4
    grid = (block_mapping.shape[0], n_caches, triton.cdiv(n_chunks, per_prog))
    _copy_blocks_kernel[grid](
        base,
        offsets,
        block_mapping,
        per_cache.stride(0),
        block_numel,
        CHUNK=chunk,
        CHUNKS_PER_PROG=per_prog,
        num_warps=4,
    )


__all__ = ["write_kv", "copy_blocks", "check_kv_cache", "FP8_DTYPE"]
