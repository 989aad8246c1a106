"""Prefill entry point: :func:`paged_prefill_attention` routes each call to the Gluon kernel or the Triton one.

On a compute-capability-9 GPU, fp16/bf16 calls with head size 64 or 128 run the warp-specialised Gluon kernel of
:mod:`kernels.attention.prefill_hopper` in one of its three forms; everything else (other GPUs, dtypes or head
sizes, one-token blocks, the CPU interpreter, a ``config`` of Triton options, or a sliding window with new K/V:
only the Gluon kernel's paged form has a window) runs the Triton kernels of :mod:`kernels.attention.prefill`. The
three switches below are the defaults of that choice; ``config={"wgmma": False}`` or ``{"wgmma": True | {...}}``
overrides them per call.
"""

from __future__ import annotations

import torch
import triton

from kernels.attention import prefill, prefill_hopper
from kernels.attention.common import window_size
from kernels.cache_ops import check_kv_cache

# Pure prefill with new K/V (``max_context_len=0``): the Gluon kernel's contiguous form, on par with cuDNN on the
# H100 and about 15% faster than the Triton new-K/V kernel (reports/kernels/README.md).
WGMMA_PREFILL_DEFAULT = True
# No new K/V (every key through the block table, with or without cached context): the Gluon kernel's paged form,
# 1.5-1.7x faster than the Triton paged kernel on the H100. Block sizes it cannot copy whole (one-token blocks)
# keep the Triton kernel.
WGMMA_PAGED_PREFILL_DEFAULT = True
# fp8 (e4m3) caches, every key through the block table: the Gluon kernel's paged form with its converter warps,
# 1.7x faster than the Triton paged kernel on the H100 on the windowed chunked prefill of the sliding-window bench
# (reports/kernels/runs/gluon-fp8-adb41d3-h100/). With new K/V fp8 runs the Triton kernel.
WGMMA_FP8_PREFILL_DEFAULT = True
# New K/V with cached context: the Gluon kernel's mixed form (context through the table, new tokens contiguous),
# about 1.6x faster than the Triton new-K/V kernel on the H100.
WGMMA_MIXED_PREFILL_DEFAULT = True


def wgmma_options(config: dict | None) -> dict | None:
    """The Gluon kernel's options: ``config["wgmma"]`` when it is a dict, else None (its defaults)."""
    wg = config.get("wgmma") if config else None
    return wg if isinstance(wg, dict) else None


def use_wgmma(config: dict | None, default: bool) -> bool:
    """Whether a prefill call goes to the Gluon warp-group-MMA kernel (:mod:`kernels.attention.prefill_hopper`)
    when the GPU supports it: ``config={"wgmma": True}`` or a dict of that kernel's options, ``False`` for the
    Triton kernel. A config without the key is one of the Triton kernel's A/B options and keeps it; no config
    means ``default`` (one of the ``WGMMA_*_PREFILL_DEFAULT`` switches)."""
    if config:
        return bool(config.get("wgmma", False))
    return default


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
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
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
            Gluon warp-group-MMA kernel of :mod:`kernels.attention.prefill_hopper` instead (with no config:
            ``WGMMA_PREFILL_DEFAULT``, on); calls it does not support fall back to the Triton kernel.
            With ``new_key`` and cached context, likewise for its mixed form (``WGMMA_MIXED_PREFILL_DEFAULT``,
            on). Without ``new_key``, the same holds for the Gluon kernel's paged form
            (``WGMMA_PAGED_PREFILL_DEFAULT``, on): fp16/bf16, head size 64 or 128, block sizes that are
            multiples of 8 dividing 128 or multiples of 128, compute capability 9.x.
        sliding_window: ``W`` tokens (``None`` or ``0``: full attention). New token ``i`` (position
            ``p = context_lens[s] + i``) sees keys at positions ``p - W < k <= p``. Block-table entries of
            blocks wholly before ``context_lens[s] - W + 1`` (the first new token's window) are never read and may
            hold a freed block's placeholder. Windowed calls without ``new_key`` run the Gluon kernel's paged form
            where it qualifies (above); with ``new_key`` they run the Triton kernel (the Gluon mixed and contiguous
            forms have no window). A window no shorter than every sequence (the block table's width, or
            ``max_context_len + max_query_len`` with ``new_key``) is full attention and takes the usual route.
        k_scale, v_scale: per-tensor scales of ``float8_e4m3fn`` caches (fp8 KV, compute capability >= 8.9):
            keys are ``k_cache * k_scale``, values ``v_cache * v_scale``; ``new_key``/``new_value`` stay in q's
            dtype and unscaled. Finite and positive for fp8, 1.0 otherwise (``ValueError``). Without ``new_key``,
            fp8 calls run the Gluon kernel's paged form where it qualifies (``WGMMA_FP8_PREFILL_DEFAULT``: its
            converter warps turn each fp8 tile into fp16 in shared memory, and bf16 q is rounded to fp16 there,
            exact for magnitudes in [2**-14, 65504]); with ``new_key``, and elsewhere, the Triton kernels.

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
    kv_fp8 = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
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
    window = window_size(sliding_window)
    if window:
        if new_key is not None and max_context_len is not None:
            longest = int(max_context_len) + int(max_query_len)
        else:
            longest = block_tables.shape[1] * k_cache.shape[1] + (int(max_query_len) if new_key is not None else 0)
        if window >= longest:
            window = 0  # every key of every sequence is inside the window: full attention
    # fp8 caches: the Gluon kernel's paged form takes them (with new K/V, the Triton new-K/V kernel)
    fp8 = dict(kv_fp8=True, k_scale=k_scale, v_scale=v_scale) if kv_fp8 else {}
    if new_key is not None:
        _newkv_route(
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
            window,
            fp8,
        )
        return out
    if use_wgmma(config, WGMMA_FP8_PREFILL_DEFAULT if fp8 else WGMMA_PAGED_PREFILL_DEFAULT):
        wg = wgmma_options(config)
        ok, _why = prefill_hopper.supported_paged(q, k_cache, v_cache, scale, wg)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_hopper.prefill_wgmma_paged_attention(
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
                sliding_window=window,
                k_scale=k_scale,
                v_scale=v_scale,
            )
            return out
    prefill.paged_launch(
        q,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens_q,
        context_lens,
        scale,
        out,
        max_query_len,
        head_pad,
        config,
        window,
        **fp8,
    )
    return out


def _newkv_route(
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
    window=0,
    fp8: dict | None = None,
) -> None:
    """``paged_prefill_attention`` with ``new_key``/``new_value``: the Gluon kernel's contiguous form (pure
    prefill) or mixed form (cached context) where it can run the call, else the Triton new-K/V kernel (always with
    a sliding ``window``)."""
    total, num_q_heads, head = q.shape
    num_kv_heads = k_cache.shape[2]
    assert new_value is not None and new_key.shape == new_value.shape == (total, num_kv_heads, head), (
        "new_key/new_value must be [total_new_tokens, num_kv_heads, head_size]"
    )
    assert new_key.stride(-1) == 1 and new_value.stride(-1) == 1
    fp8 = fp8 or {}
    if fp8 and (new_key.dtype != q.dtype or new_value.dtype != q.dtype):
        raise ValueError(f"with an fp8 cache new_key/new_value stay in q's dtype ({q.dtype}), got {new_key.dtype}")
    if window or fp8:
        pass  # the Gluon kernel's mixed and contiguous forms have no window and no fp8: the Triton kernel below
    elif max_context_len is not None and int(max_context_len) == 0 and use_wgmma(config, WGMMA_PREFILL_DEFAULT):
        ok, _why = prefill_hopper.supported(q, new_key, new_value, scale)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_hopper.prefill_wgmma_attention(
                q, new_key, new_value, cu_seqlens_q, scale, int(max_query_len), out=out, config=wgmma_options(config)
            )
            return
    if (
        not window
        and not fp8
        and (max_context_len is None or int(max_context_len) > 0)
        and use_wgmma(config, WGMMA_MIXED_PREFILL_DEFAULT)
    ):
        wg = wgmma_options(config)
        ok, _why = prefill_hopper.supported_mixed(q, k_cache, v_cache, new_key, new_value, scale, wg)
        if ok:  # otherwise the Triton kernel below runs the call
            prefill_hopper.prefill_wgmma_mixed_attention(
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
    prefill.newkv_launch(
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
        window,
        **fp8,
    )


__all__ = [
    "paged_prefill_attention",
    "WGMMA_PREFILL_DEFAULT",
    "WGMMA_PAGED_PREFILL_DEFAULT",
    "WGMMA_MIXED_PREFILL_DEFAULT",
    "WGMMA_FP8_PREFILL_DEFAULT",
]
