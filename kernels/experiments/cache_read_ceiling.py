"""How fast can the paged cache layout be *read* at all, with no attention math?

    python -m kernels.experiments.cache_read_ceiling --out DIR      # about 20 s on an H100

The decode kernel reads, per (sequence, KV head) program, one 256-byte piece (head size 128, bf16) per token,
at a stride of ``num_kv_heads * 256`` bytes, from 16-token blocks scattered by the block table. A plain
streaming read of the same bytes is a few percent faster than the decode kernel on the batch-16 cases. This script
times, in one process on the same cache, reads of the same K and V bytes:

* ``contiguous``: a flat streaming read of a buffer of the same size (the ceiling under this timing method);
* ``head_gather``: the decode kernel's access pattern without its math (per-head pieces through the table);
* ``head_gather_inorder``: the same with an in-order block table;
* ``row_read``: one program per (sequence, token range) reading whole blocks (all heads, contiguous) through the
  table;

plus loads of 2-8 adjacent heads per program, the default decode kernel on that cache and cuDNN SDPA on a
contiguous copy of it. Times are medians of graph replays after an L2 clear (``kernels.bench.timing``), as in the
benchmark. Each read's sum is checked against torch's. The answer on the H100 is in reports/kernels/README.md (the
batch-16 misses are bounded by the layout under this timing method).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
import triton
import triton.language as tl

from kernels.attention import paged_decode_attention
from kernels.bench.sdpa import run_sdpa
from kernels.bench.timing import bench, copy_ceiling, env_info, graph


@triton.jit
def _read_kernel(x_ptr, out_ptr, n_per_prog, BLOCK: tl.constexpr):
    """A flat streaming read: each program sums ``n_per_prog`` contiguous elements."""
    pid = tl.program_id(0)
    base = x_ptr + pid.to(tl.int64) * n_per_prog
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(0, n_per_prog, BLOCK, num_stages=4):
        acc += tl.load(base + i + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _head_gather_kernel(
    k_ptr,
    v_ptr,
    bt_ptr,
    out_ptr,
    part_tokens,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_bts,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD: tl.constexpr,
    HP: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Program (head group, sequence, part): the decode kernel's loads of ``part_tokens`` tokens for ``HP``
    adjacent KV heads (one contiguous run of ``HP * HEAD`` elements per token), accumulated elementwise (no
    reduction inside the loop), summed at the end."""
    hg = tl.program_id(0)
    seq = tl.program_id(1)
    part = tl.program_id(2)
    start = part * part_tokens
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HP * HEAD)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bts
    acc = tl.zeros([BLOCK_N, HP * HEAD], dtype=tl.float32)
    for n0 in tl.range(start, start + part_tokens, BLOCK_N, num_stages=STAGES):
        offs = n0 + offs_n
        blk = tl.load(bt_row + offs // BLOCK_SIZE).to(tl.int64)
        addr = blk * stride_kb + (offs % BLOCK_SIZE).to(tl.int64) * stride_kt + (hg * HP).to(tl.int64) * stride_kh
        k = tl.load(k_ptr + addr[:, None] + offs_d[None, :])
        v = tl.load(v_ptr + addr[:, None] + offs_d[None, :])
        acc += k.to(tl.float32) + v.to(tl.float32)
    pid = (seq * tl.num_programs(0) + hg) * tl.num_programs(2) + part
    tl.store(out_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _row_read_kernel(
    k_ptr,
    v_ptr,
    bt_ptr,
    out_ptr,
    part_blocks,
    block_elems,
    stride_kb,
    stride_bts,
    CHUNK: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Program (sequence, part): ``part_blocks`` whole blocks (all heads, ``block_elems`` contiguous elements
    each) through the table, in chunks of ``CHUNK`` elements, summed."""
    seq = tl.program_id(0)
    part = tl.program_id(1)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bts
    offs = tl.arange(0, CHUNK)
    chunks = block_elems // CHUNK
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    for i in tl.range(0, part_blocks * chunks, num_stages=STAGES):
        j = part * part_blocks + i // chunks
        blk = tl.load(bt_row + j).to(tl.int64)
        base = blk * stride_kb + (i % chunks) * CHUNK
        acc += tl.load(k_ptr + base + offs).to(tl.float32) + tl.load(v_ptr + base + offs).to(tl.float32)
    tl.store(out_ptr + seq * tl.num_programs(1) + part, tl.sum(acc))


def _check(name: str, got: torch.Tensor, want: float, n: int) -> bool:
    ok = abs(got.double().sum().item() - want) < 1e-2 * math.sqrt(n) + 1e-3 * abs(want)
    if not ok:
        print(f"  {name}: sum mismatch {got.double().sum().item():.6g} vs {want:.6g}", flush=True)
    return ok


def layout_case(
    name: str,
    batch: int,
    hkv: int,
    ctx: int,
    hq: int,
    t_graph,
    block: int = 16,
    head: int = 128,
    dtype=torch.bfloat16,
    parts_head: int = 1,
    parts_row: int = 32,
) -> dict:
    """Time the four reads and the default decode on one cache; return the record (ms, TB/s of K+V bytes)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    nblk = ctx // block
    nb = batch * nblk
    k = torch.randn((nb, block, hkv, head), dtype=dtype, device=dev)
    v = torch.randn_like(k)
    bt = torch.randperm(nb, device=dev).to(torch.int32).view(batch, nblk)
    bt_in = torch.arange(nb, device=dev, dtype=torch.int32).view(batch, nblk)
    n = 2 * k.numel()
    want = k.double().sum().item() + v.double().sum().item()
    rec = {"case": name, "kv_bytes": n * k.element_size(), "ms": {}, "ok": {}}

    o_h = torch.empty(batch * hkv * parts_head, dtype=torch.float32, device=dev)
    part_tok = ctx // parts_head

    def head_gather(table, hp=1, stages=3, warps=4):
        return lambda: _head_gather_kernel[(hkv // hp, batch, parts_head)](
            k,
            v,
            table,
            o_h,
            part_tok,
            k.stride(0),
            k.stride(1),
            k.stride(2),
            table.stride(0),
            BLOCK_SIZE=block,
            BLOCK_N=64 // hp,
            HEAD=head,
            HP=hp,
            STAGES=stages,
            num_warps=warps,
        )

    o_r = torch.empty(batch * parts_row, dtype=torch.float32, device=dev)
    block_elems = block * hkv * head

    def row_read():
        return _row_read_kernel[(batch, parts_row)](
            k,
            v,
            bt,
            o_r,
            nblk // parts_row,
            block_elems,
            k.stride(0),
            bt.stride(0),
            CHUNK=min(4096, block_elems),
            STAGES=4,
            num_warps=8,
        )

    flat = torch.cat([k.view(-1), v.view(-1)])
    progs = 132 * 4 if dev == "cuda" else 4
    chunk = 4096 if dev == "cuda" else 64
    per = flat.numel() // progs // chunk * chunk
    o_f = torch.empty(progs, dtype=torch.float32, device=dev)

    def flat_read():
        return _read_kernel[(progs,)](flat, o_f, per, BLOCK=chunk, num_warps=8)

    q = torch.randn((batch, hq, head), dtype=dtype, device=dev)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    out = torch.empty_like(q)

    def decode():
        return paged_decode_attention(q, k, v, bt, lens, head**-0.5, out=out)

    sdpa = []
    if dev == "cuda":  # cuDNN SDPA on a contiguous [batch, kv heads, context, head] copy, as in kernels.bench
        from torch.nn.attention import SDPBackend

        kc = k[bt.long()].view(batch, ctx, hkv, head).transpose(1, 2).contiguous()
        vc = v[bt.long()].view(batch, ctx, hkv, head).transpose(1, 2).contiguous()
        q4 = q.view(batch, hq, 1, head)

        def cudnn():
            return run_sdpa(SDPBackend.CUDNN_ATTENTION, q4, kc, vc, gqa=hq != hkv)

        ref = cudnn().view(batch, hq, head).float()
        rec["decode_vs_cudnn_max_diff"] = (decode().float() - ref).abs().max().item()
        sdpa = [("sdpa_cudnn", cudnn, None, None, None)]

    flat_want = flat[: per * progs].double().sum().item()
    variants = (
        [
            ("contiguous", flat_read, o_f, flat_want, per * progs),
            ("head_gather", head_gather(bt), o_h, want, n),
            ("head_gather_inorder", head_gather(bt_in), o_h, want, n),
            ("head_gather_s5", head_gather(bt, stages=5), o_h, want, n),
            ("head_gather_w8", head_gather(bt, warps=8), o_h, want, n),
            ("head2_gather", head_gather(bt, hp=2), o_h[: o_h.numel() // 2], want, n),
            ("head4_gather", head_gather(bt, hp=4), o_h[: o_h.numel() // 4], want, n),
            ("head8_gather", head_gather(bt, hp=8), o_h[: o_h.numel() // 8], want, n),
            ("row_read", row_read, o_r, want, n),
            ("decode_default", decode, None, None, None),
        ]
        + sdpa
        + [
            ("contiguous_r", flat_read, o_f, flat_want, per * progs),
            ("head_gather_r", head_gather(bt), o_h, want, n),
            ("row_read_r", row_read, o_r, want, n),
            ("decode_default_r", decode, None, None, None),
        ]
        + [(f"{n}_r", *rest) for n, *rest in sdpa]
    )
    for label, fn, o, w, cnt in variants:
        if o is not None:
            o_h.fill_(float("nan"))  # every read's output, so an unwritten slot shows
            o.fill_(float("nan"))
        fn()
        if o is not None:
            rec["ok"][label] = _check(label, o, w, cnt)
        rec["ms"][label] = t_graph(fn)
    lines = [name]
    for label, t in rec["ms"].items():
        lines.append(f"  {label:22s} {t:.4f} ms {rec['kv_bytes'] / t / 1e9:.3f} TB/s ok={rec['ok'].get(label, '-')}")
    print("\n".join(lines), flush=True)
    return rec


CASES = [  # name, batch, kv heads, context, q heads, (sequence, head) programs split into parts_head
    ("mha b16 x 8192", 16, 32, 8192, 32, 1),
    ("gqa b16 x 8192", 16, 8, 8192, 32, 4),
    ("mha b64 x 2048", 64, 32, 2048, 32, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res = {"env": env_info([]), "copy_ceiling": copy_ceiling(), "cases": []}
    print(f"copy ceiling {res['copy_ceiling']['tb_s']:.3f} TB/s", flush=True)

    def t_graph(fn):
        return bench(graph(fn), rep=100)

    for name, batch, hkv, ctx, hq, parts in CASES:
        res["cases"].append(layout_case(name, batch, hkv, ctx, hq, t_graph, parts_head=parts))
        with open(os.path.join(a.out, "layout.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
