"""The sliding-window benchmark's model of the bytes our kernels move (``kernels.bench.sliding_window``), and the
interpreter's count it is checked against (``--cpu-smoke``)."""

from __future__ import annotations

from kernels.bench.run import BLOCK, HEAD


def sw_decode_bytes(lens, window, hq, hkv, esize, splits, kv_esize=None) -> dict:
    """Bytes a windowed decode step moves (our split-KV kernel): the K/V rows of each sequence's last ``window``
    keys, the block-table entries of the blocks holding them, the split-KV partials (fp32 output and log-sum-exp,
    written and read back) and q and the output. ``window_kv`` is the window's K/V bytes. ``esize``: bytes per
    element of q and the output; ``kv_esize``: of the cache (default ``esize``; 1 for fp8)."""
    kv_esize = esize if kv_esize is None else kv_esize
    toks = sum(min(max(n, 0), window) for n in lens)
    blocks = sum(blocks_spanned(max(0, n - window), n) for n in lens)
    kv = toks * hkv * HEAD * kv_esize * 2
    rec = {
        "window_kv": kv,
        "kv_rows": kv,
        "block_table": 4 * blocks,
        "partials": len(lens) * hq * splits * (HEAD + 1) * 4 * 2 if splits > 1 else 0,
        "q_out": len(lens) * hq * HEAD * esize * 2,
    }
    rec["kv_moved"] = rec["kv_rows"] + rec["block_table"] + rec["partials"]
    rec["total"] = rec["kv_moved"] + rec["q_out"]
    return rec


def sw_prefill_bytes(batch, ctx, new, window, hq, hkv, esize, block_m, kv_esize=None) -> dict:
    """Bytes a windowed prefill moves (our Triton paged kernel, every sequence ``ctx`` cached + ``new`` new tokens):
    distinct K/V rows (from the first new token's window on: ``ctx - window + 1``), their block-table entries, and q
    and the output. ``kv_issued`` counts the K/V rows every program loads (each ``block_m``-row tile of each q head
    loads the keys its rows see), most of them served by L2. ``esize``/``kv_esize`` as in ``sw_decode_bytes``."""
    kv_esize = esize if kv_esize is None else kv_esize
    lo = max(0, ctx - window + 1)
    kv = batch * (ctx + new - lo) * hkv * HEAD * kv_esize * 2
    issued = 0
    for m0 in range(0, new, block_m):
        tile_lo = max(0, ctx + m0 - window + 1)
        issued += min(ctx + new, ctx + m0 + block_m) - tile_lo
    rec = {
        "window_kv": kv,
        "kv_rows": kv,
        "block_table": 4 * batch * blocks_spanned(lo, ctx + new),
        "q_out": batch * new * hq * HEAD * esize * 2,
        "kv_issued": batch * hq * issued * HEAD * kv_esize * 2,
    }
    rec["kv_moved"] = rec["kv_rows"] + rec["block_table"]
    rec["total"] = rec["kv_moved"] + rec["q_out"]
    return rec


def blocks_spanned(start: int, end: int) -> int:
    return 0 if end <= start else (end - 1) // BLOCK - start // BLOCK + 1


def count_loads(fn, k, v, bt) -> dict:
    """Run ``fn`` in the interpreter, counting the distinct and repeated bytes it loads from ``k``, ``v`` and ``bt``."""
    from kernels.bench.loads import bytes_read, record_loads

    with record_loads() as loads:
        fn()
    (k_all, k_distinct), (v_all, v_distinct), (_, bt_distinct) = (bytes_read(loads, t) for t in (k, v, bt))
    return {"kv_rows": k_distinct + v_distinct, "kv_issued": k_all + v_all, "block_table": bt_distinct}
