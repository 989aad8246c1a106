"""FlexAttention with paged KV as a baseline: ``torch.compile(flex_attention)`` over the physical pool, with a
``BlockMask`` whose KV blocks are the 16-token pages (nothing gathered)."""

from __future__ import annotations

import math
import time

import torch

from kernels.bench.run import BLOCK, HEAD, RUN
from kernels.bench.timing import bench, bench_graph_or_eager, cpu_us

_FLEX = {}


def flex_available() -> dict:
    info = {}
    try:
        from torch.nn.attention import flex_attention as fa

        info["flex_attention"] = hasattr(fa, "flex_attention") and hasattr(fa, "BlockMask")
    except Exception as e:  # noqa: BLE001
        info["flex_attention"] = f"unavailable: {type(e).__name__}: {e}"[:200]
    try:
        from torch.nn.attention.experimental import _paged_attention as pg

        info["experimental_PagedAttention_helper"] = hasattr(pg, "PagedAttention")
    except Exception:  # noqa: BLE001
        info["experimental_PagedAttention_helper"] = False
    return info


def flex_compiled():
    """``torch.compile(flex_attention, dynamic=False)``, made once; one compile per new shape."""
    if "fn" not in _FLEX:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        for name in ("recompile_limit", "cache_size_limit"):  # every case is a new shape: allow them all
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        # static shapes: with dynamic batch/heads inductor would not pick its flex-decoding kernel
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_paged_block_mask(bt, lens, num_blocks):
    """A FlexAttention ``BlockMask`` for decode over the paged cache, gathering nothing.

    K/V are the physical pool viewed as one sequence of ``num_blocks * BLOCK`` tokens
    (``[1, Hkv, num_blocks * BLOCK, D]``, broadcast over the batch).  The mask's KV block
    size is the page size (``BLOCK``), so block ``j`` of the mask is physical page ``j``:

    * full blocks of sequence ``s``: its complete pages ``bt[s, :len // BLOCK]`` (no mask_mod);
    * partial blocks: its last, incomplete page, if any, where mask_mod keeps the valid tokens.

    ``mask_mod`` itself is exact everywhere (page owner == sequence and logical position <
    length), so the eager (unfused) path, which ignores the block lists, gives the same answer.
    The index tensors are ``num_blocks`` wide (as torch's experimental ``PagedAttention`` helper
    makes them), which inductor's CPU lowering needs.  Built from the host-side ``lens``: no sync.
    """
    import inspect

    from torch.nn.attention.flex_attention import BlockMask

    dev = bt.device
    b, width = bt.shape
    nblk = torch.tensor([math.ceil(n / BLOCK) for n in lens], dtype=torch.int64, device=dev)
    n_full = torch.tensor([n // BLOCK for n in lens], dtype=torch.int32, device=dev)
    has_part = torch.tensor([int(n % BLOCK != 0) for n in lens], dtype=torch.int32, device=dev)
    sl = torch.tensor(lens, dtype=torch.int32, device=dev)
    cols = torch.arange(width, device=dev)
    full_idx = torch.zeros((b, num_blocks), dtype=torch.int32, device=dev)
    full_idx[:, :width] = torch.where(cols[None, :] < n_full[:, None].long(), bt, torch.zeros_like(bt))
    part_idx = torch.zeros((b, num_blocks), dtype=torch.int32, device=dev)
    last = bt.gather(1, n_full.long().clamp(max=width - 1)[:, None])[:, 0]
    part_idx[:, 0] = torch.where(has_part.bool(), last, torch.zeros_like(last))
    # page -> (owning sequence, logical page index); -1 = free page
    valid = cols[None, :] < nblk[:, None]
    rows = torch.arange(b, device=dev, dtype=torch.int32)[:, None].expand(b, width)
    pages = bt[valid].long()
    owner = torch.full((num_blocks,), -1, dtype=torch.int32, device=dev)
    logical = torch.zeros((num_blocks,), dtype=torch.int32, device=dev)
    owner[pages] = rows[valid]
    logical[pages] = cols[None, :].expand(b, width)[valid].to(torch.int32)

    def mask_mod(bi, h, q_idx, kv_idx):
        page = kv_idx // BLOCK
        return (owner[page] == bi) & (logical[page] * BLOCK + kv_idx % BLOCK < sl[bi])

    kw = {}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kw["compute_q_blocks"] = False  # forward only: no transposed (q-block) lists
    return BlockMask.from_kv_blocks(
        has_part.view(b, 1, 1),
        part_idx.view(b, 1, 1, num_blocks),
        n_full.view(b, 1, 1),
        full_idx.view(b, 1, 1, num_blocks),
        BLOCK_SIZE=(128, BLOCK),
        mask_mod=mask_mod,
        seq_lengths=(1, num_blocks * BLOCK),
        **kw,
    )


def _flex_fn(c, lens, hq, hkv, scale):
    """The timed FlexAttention call on case ``c`` (no gather; the cache is read in place)."""
    q, kc, vc = c["q"], c["k_cache"], c["v_cache"]
    batch, nb = q.shape[0], kc.shape[0]
    bm = flex_paged_block_mask(c["bt"], lens, nb)
    q4 = q.view(batch, hq, 1, HEAD)
    k4 = kc.view(1, nb * BLOCK, hkv, HEAD).transpose(1, 2)  # [1, Hkv, pool tokens, D], strided view
    v4 = vc.view(1, nb * BLOCK, hkv, HEAD).transpose(1, 2)
    kw = {"enable_gqa": True} if hq != hkv else {}
    if _FLEX.get("cpu_eager"):  # --cpu-smoke only, after the CPU compile failed once
        from torch.nn.attention.flex_attention import flex_attention as flex
    else:
        flex = flex_compiled()
    return lambda: flex(q4, k4, v4, block_mask=bm, scale=scale, **kw)


def measure_flex(c, rec, times, eager, lens, hq, hkv, scale, ref_out):
    """Time FlexAttention (paged) on the case's data; record compile time and error vs the reference."""
    batch = c["q"].shape[0]
    t0 = time.time()
    fn = _flex_fn(c, lens, hq, hkv, scale)
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        if not RUN.smoke:
            raise
        # CPU smoke only: inductor's CPU flex lowering may be unavailable; the eager path checks the mask
        print(
            f"flex: CPU compile failed ({type(e).__name__}: {str(e)[:200]}); eager flex_attention from now on",
            flush=True,
        )
        _FLEX["cpu_eager"] = f"eager flex_attention (CPU compile failed: {type(e).__name__})"
        fn = _flex_fn(c, lens, hq, hkv, scale)
        out = fn()
    rec["flex_mode"] = _FLEX.get("cpu_eager") or "torch.compile(flex_attention, dynamic=False)"
    if not RUN.smoke:
        torch.cuda.synchronize()
    rec["flex_first_call_s"] = time.time() - t0  # compile included
    out = out.view(batch, hq, HEAD).float()
    rec["flex_nan"] = bool(torch.isnan(out).any().item())
    rec["flex_max_abs_err_vs_ref"] = (out - ref_out).abs().max().item()
    times["flex_paged"] = bench_graph_or_eager(fn, rec, "flex_paged")
    eager["flex_paged"] = bench(fn)
    rec.setdefault("cpu_us_per_call", {})["flex_paged"] = cpu_us(fn)
