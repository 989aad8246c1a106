"""Plain-torch references for the Triton kernels in this package.

Every function here is written for clarity, not speed: loops over sequences,
explicit gathers through the block table, and float32 (or float64, if the
inputs are float64) arithmetic.  The tests compare the kernels against these.

Layouts (the same as the kernels'):

* ``q``            ``[num_seqs, num_q_heads, head_size]`` (decode) or
                   ``[total_new_tokens, num_q_heads, head_size]`` (prefill)
* ``k_cache``/``v_cache`` ``[num_blocks, block_size, num_kv_heads, head_size]``
* ``block_tables`` int32 ``[num_seqs, max_blocks_per_seq]``; logical block ``j``
  of sequence ``s`` lives in physical block ``block_tables[s, j]``
* ``seq_lens``     int32 ``[num_seqs]`` tokens of context (for decode, the
  current token's K/V is already in the cache and counted)
* q head ``h`` uses KV head ``h // (num_q_heads // num_kv_heads)``
* ``sliding_window`` ``W`` (tokens; ``None`` or ``0`` = full attention): a query at
  position ``p`` sees keys at positions ``k`` with ``p - W < k <= p``.  The
  references gather only the blocks that hold such keys, so block-table entries
  of blocks wholly before a window may hold anything (a freed block's placeholder).
* fp8 KV (``torch.float8_e4m3fn`` caches): ``k_scale``/``v_scale`` are per-tensor
  scales; the references read ``key = cache.float() * k_scale`` (only the gathered
  rows) and :func:`ref_write_kv` stores ``key / k_scale`` clamped to +-448 and
  rounded by torch's float8 conversion (to nearest even).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """q [Lq, Hq, D], k/v [Lk, Hkv, D] -> [Lq, Hq, D] in the accumulation dtype.

    ``mask`` [Lq, Lk] bool, True = attend.  Rows that see no key give zeros.
    """
    acc = _acc_dtype(q)
    hq, hkv = q.shape[1], k.shape[1]
    group = hq // hkv
    if k.shape[0] == 0:
        return torch.zeros(q.shape, dtype=acc, device=q.device)
    qf = q.to(acc).transpose(0, 1)  # [Hq, Lq, D]
    kf = k.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, Lk, D]
    vf = v.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)
    s = torch.matmul(qf, kf.transpose(1, 2)) * scale  # [Hq, Lq, Lk]
    if mask is not None:
        s = s.masked_fill(~mask[None], float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p, vf) / torch.where(den > 0, den, torch.ones_like(den))
    return o.transpose(0, 1)


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, length: int) -> torch.Tensor:
    """Logical tokens ``0..length-1`` of one sequence: ``[length, num_kv_heads, head_size]``."""
    block_size = cache.shape[1]
    nblocks = (length + block_size - 1) // block_size
    blocks = block_table_row[:nblocks].long()
    return cache[blocks].reshape(-1, cache.shape[2], cache.shape[3])[:length]


def gather_kv_range(cache: torch.Tensor, block_table_row: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Logical tokens ``start..end-1`` of one sequence, reading only the blocks that hold them (table entries of
    earlier blocks are never looked at): ``[end - start, num_kv_heads, head_size]``."""
    block_size = cache.shape[1]
    start = max(0, min(start, end))
    if end <= start:
        return cache.new_zeros((0, cache.shape[2], cache.shape[3]))
    b0, b1 = start // block_size, (end + block_size - 1) // block_size
    blocks = block_table_row[b0:b1].long()
    toks = cache[blocks].reshape(-1, cache.shape[2], cache.shape[3])
    return toks[start - b0 * block_size : end - b0 * block_size]


def _dequant(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Rows read from a cache as values: ``x.float() * scale`` for float8_e4m3fn, else ``x`` (scale must be 1)."""
    if x.dtype == torch.float8_e4m3fn:
        return x.float() * float(scale)
    assert float(scale) == 1.0, "k_scale/v_scale apply to float8_e4m3fn caches only"
    return x


def quantize_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x / scale`` (fp32, elementwise IEEE division) clamped to +-448 and rounded to float8_e4m3fn."""
    xf = x.float()
    return (xf / torch.full_like(xf, float(scale))).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


def _window(sliding_window: int | None) -> int:
    """``sliding_window`` as an int, 0 meaning full attention."""
    w = int(sliding_window or 0)
    if w < 0:
        raise ValueError(f"sliding_window must be None or >= 0, got {sliding_window}")
    return w


def ref_paged_decode(
    q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window=None, k_scale=1.0, v_scale=1.0
) -> torch.Tensor:
    """One query token per sequence attends to its ``seq_lens[s]`` cached tokens (the last
    ``sliding_window`` of them with a window: the query sits at position ``seq_lens[s] - 1``).
    fp8 caches are read as ``cache * k_scale`` / ``cache * v_scale``."""
    w = _window(sliding_window)
    out = torch.empty_like(q)
    for s in range(q.shape[0]):
        n = int(seq_lens[s])
        lo = max(0, n - w) if w else 0
        k = _dequant(gather_kv_range(k_cache, block_tables[s], lo, n), k_scale)
        v = _dequant(gather_kv_range(v_cache, block_tables[s], lo, n), v_scale)
        out[s] = _attend(q[s : s + 1], k, v, scale)[0].to(q.dtype)
    return out


def ref_contiguous_decode(
    q, k_pool, v_pool, seq_starts, seq_lens, scale, sliding_window=None, k_scale=1.0, v_scale=1.0
) -> torch.Tensor:
    """Decode over per-sequence contiguous ranges ``k_pool[start:start+len]`` (the last ``sliding_window``
    slots of each with a window; fp8 pools read as ``pool * scale``).

    ``k_pool``/``v_pool`` are ``[num_slots, num_kv_heads, head_size]``.
    """
    w = _window(sliding_window)
    out = torch.empty_like(q)
    for s in range(q.shape[0]):
        a, n = int(seq_starts[s]), int(seq_lens[s])
        lo = max(0, n - w) if w else 0
        k = _dequant(k_pool[a + lo : a + n], k_scale)
        v = _dequant(v_pool[a + lo : a + n], v_scale)
        out[s] = _attend(q[s : s + 1], k, v, scale)[0].to(q.dtype)
    return out


def ref_paged_prefill(
    q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, sliding_window=None, k_scale=1.0, v_scale=1.0
) -> torch.Tensor:
    """New tokens attend causally to themselves and to their cached context.

    Sequence ``s`` owns query rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]``; its
    K/V for positions ``0 .. context_lens[s] + new_len - 1`` are all in the
    paged cache already (the new tokens' K/V written by ``write_kv`` first).
    New token ``i`` sits at position ``context_lens[s] + i`` and sees keys at
    positions ``<=`` its own (and, with a window ``W``, ``> position - W``).
    fp8 caches are read as ``cache * k_scale`` / ``cache * v_scale``.
    """
    w = _window(sliding_window)
    out = torch.empty_like(q)
    for s in range(len(context_lens)):
        a, b = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        if b == a:
            continue
        ctx = int(context_lens[s])
        n = ctx + (b - a)
        lo = max(0, ctx - w + 1) if w else 0  # the first new token's window: earlier blocks are never read
        k = _dequant(gather_kv_range(k_cache, block_tables[s], lo, n), k_scale)
        v = _dequant(gather_kv_range(v_cache, block_tables[s], lo, n), v_scale)
        qpos = torch.arange(ctx, n, device=q.device)
        kpos = torch.arange(lo, n, device=q.device)
        mask = kpos[None, :] <= qpos[:, None]
        if w:
            mask &= kpos[None, :] > qpos[:, None] - w
        out[a:b] = _attend(q[a:b], k, v, scale, mask).to(q.dtype)
    return out


def ref_write_kv(key, value, k_cache, v_cache, slot_mapping, k_scale=1.0, v_scale=1.0) -> None:
    """``cache[slot // block_size, slot % block_size] = new`` for every slot >= 0 (in place); fp8 caches store
    :func:`quantize_fp8` of ``new`` with ``k_scale`` / ``v_scale``."""
    block_size = k_cache.shape[1]

    def cast(x, cache, sc):
        return quantize_fp8(x, sc) if cache.dtype == torch.float8_e4m3fn else x.to(cache.dtype)

    for t in range(key.shape[0]):
        slot = int(slot_mapping[t])
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = cast(key[t], k_cache, k_scale)
        v_cache[slot // block_size, slot % block_size] = cast(value[t], v_cache, v_scale)


def ref_copy_blocks(caches: torch.Tensor | Sequence, block_mapping, block_dim: int = 1) -> None:
    """For every cache and every ``(src, dst)`` row of ``block_mapping``: ``cache[dst] = cache[src]``.

    ``caches`` is a list of per-layer caches (each ``[num_blocks, ...]``,
    nested lists/tuples such as ``[(k0, v0), (k1, v1)]`` allowed) or one
    stacked tensor whose block axis is ``block_dim``.
    """
    pairs = [(int(a), int(b)) for a, b in block_mapping.tolist()]
    if isinstance(caches, torch.Tensor):
        for src, dst in pairs:
            caches.select(block_dim, dst).copy_(caches.select(block_dim, src))
        return
    for c in _flatten(caches):
        for src, dst in pairs:
            c[dst].copy_(c[src])


def _flatten(caches):
    out = []
    for c in caches:
        if isinstance(c, torch.Tensor):
            out.append(c)
        else:
            out.extend(_flatten(c))
    return out
