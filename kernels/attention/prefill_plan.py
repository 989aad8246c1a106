"""Tile shapes and options of the Triton prefill kernels (:mod:`kernels.attention.prefill`).

:func:`prefill_config` (the paged kernel) and :func:`prefill_newkv_config` (the new-K/V kernel) give the default
tiles for a call; :func:`shape_override` says whether a caller's ``config`` sets the tile shape itself;
:func:`pos_scale` and :func:`lazy_tau` turn the ``fold_scale``, ``exp16`` and ``lazy_rescale`` options into the
kernels' constexprs.
"""

from __future__ import annotations

import torch

from kernels.attention.common import interpreting

# Prefill: 128 x 128 tiles with 8 warps once a sequence has this many new tokens (one full 128-row tile), see
# prefill_config and prefill_newkv_config. 16-bit dtypes only: in fp32 the 3-stage tiles need 262 KB of shared
# memory, past the H100's 227 KB.
WIDE_PREFILL_MIN_QUERY = 128
WIDE_DTYPES = (torch.float16, torch.bfloat16)


def pos_scale(scale: float, cfg: dict, dtype: torch.dtype) -> int:
    """The Triton prefill kernels' POS_SCALE: 0 = scale applied before the row maximum; 1 = scale folded into the
    exponent's multiply-add (``fold_scale``, default, needs scale > 0); 2 = folded, with packed 16-bit exp2
    (``exp16``, fp16/bf16 on the GPU only: the interpreter cannot run inline PTX)."""
    if not (float(scale) > 0 and bool(cfg.get("fold_scale", True))):
        return 0
    if cfg.get("exp16") and dtype in (torch.float16, torch.bfloat16) and not interpreting():
        return 2
    return 1


def lazy_tau(scale: float, cfg: dict, dtype: torch.dtype) -> float:
    """The Triton prefill kernels' LAZY_TAU (config ``lazy_rescale``: ``True`` for 8, or a threshold in log2 units;
    off by default). 0.0 = rescale on every tile. Only the folded-scale form (``pos_scale`` 1) has the lazy step, and
    the threshold is capped at 8 in 16-bit dtypes and 32 in fp32, so that ``p <= 2**tau`` fits the dot's input."""
    tau = cfg.get("lazy_rescale", False)
    if tau is True:
        tau = 8.0
    tau = float(tau or 0.0)
    if tau <= 0.0 or pos_scale(scale, cfg, dtype) != 1:
        return 0.0
    return min(tau, 8.0 if dtype in (torch.float16, torch.bfloat16) else 32.0)


def prefill_newkv_config(
    head_pad: int, dtype: torch.dtype, max_query_len: int = 0, max_context_len: int | None = None
) -> dict:
    """Defaults of the contiguous-new-K/V prefill path (``paged_prefill_attention(new_key=...)``).

    For fp16/bf16 and head sizes padded to 128, with a positive ``max_context_len`` hint and at least
    ``WIDE_PREFILL_MIN_QUERY`` new tokens, 128 x 128 tiles with 8 warps; otherwise (pure prefill, no hint, fp32)
    64 x 64 with 4 warps."""
    if interpreting():
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=1, tma=False, warp_specialize=False, reverse_m=True)
    if head_pad <= 128:
        if (
            head_pad == 128
            and dtype in WIDE_DTYPES
            and max_context_len is not None
            and max_context_len > 0
            and max_query_len >= WIDE_PREFILL_MIN_QUERY
        ):
            # with cached context, 128-row tiles read each context tile once per 128 queries instead of 64: 1-6%
            # faster on every context case on the H100 (reports/kernels/README.md)
            return dict(
                block_m=128, block_n=128, num_warps=8, num_stages=3, tma=True, warp_specialize=False, reverse_m=True
            )
        # pure prefill: best of the H100 sweeps: 64 x 64 tiles, 4 warps, 3 stages, TMA loads; 128 x 128 tiles with
        # 8 warps were 9% slower (one program per SM: 230 KB of shared memory), pointer loads instead of TMA 33%
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3, tma=True, warp_specialize=False, reverse_m=True)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2, tma=False, warp_specialize=False, reverse_m=True)


def shape_override(config: dict | None) -> bool:
    """Whether a prefill ``config`` sets any part of the tile shape (then the wide default is not used)."""
    return bool(config) and any(k in config for k in ("block_m", "block_n", "num_warps", "num_stages"))


def prefill_config(head_pad: int, dtype: torch.dtype, max_query_len: int = 0) -> dict:
    """Defaults of the paged prefill kernel: for fp16/bf16 and head sizes padded to 128 (the measured ones),
    128 x 128 tiles with 8 warps once a sequence has at least ``WIDE_PREFILL_MIN_QUERY`` new tokens, else 64 x 64
    with 4 warps."""
    if interpreting():
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=1)
    if head_pad <= 128:
        if head_pad == 128 and dtype in WIDE_DTYPES and max_query_len >= WIDE_PREFILL_MIN_QUERY:
            # faster than 64 x 64 on every measured H100 case: 1% on pure prefill, 3-7% with cached context
            # (reports/kernels/README.md). Each program reads its K/V tiles once per 128 queries.
            return dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
        # short prompts: a 128-row tile would be mostly padding (the benchmark's sweep chose 64 x 64)
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2)
