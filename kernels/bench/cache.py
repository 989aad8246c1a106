"""Cache operations: ``write_kv`` against torch ``index_copy_``, ``copy_blocks`` against a per-cache loop."""

from __future__ import annotations

import torch

from kernels import cache_ops
from kernels.bench.run import BLOCK, HEAD, RUN
from kernels.bench.timing import bench_graph_or_eager, frees_device_memory


@frees_device_memory
def measure_write_kv(tokens, heads, ceiling_tb_s):
    torch.manual_seed(2)
    num_blocks = 64 if RUN.smoke else 32768
    kc = torch.randn((num_blocks, BLOCK, heads, HEAD), dtype=RUN.dtype, device=RUN.dev)
    vc = torch.randn_like(kc)
    key = torch.randn((tokens, heads, HEAD), dtype=RUN.dtype, device=RUN.dev)
    val = torch.randn_like(key)
    slots = torch.randperm(num_blocks * BLOCK, device=RUN.dev)[:tokens]
    moved = 2 * 2 * key.numel() * key.element_size()  # K and V, read + write
    kflat, vflat = kc.view(-1, heads, HEAD), vc.view(-1, heads, HEAD)
    dst_k, dst_v = torch.empty_like(key), torch.empty_like(val)

    def torch_index_copy():
        kflat.index_copy_(0, slots, key)
        vflat.index_copy_(0, slots, val)

    def plain_copy():
        dst_k.copy_(key)
        dst_v.copy_(val)

    rec = {}
    times = {
        "ours_write_kv": bench_graph_or_eager(lambda: cache_ops.write_kv(key, val, kc, vc, slots), rec, "ours"),
        "torch_index_copy": bench_graph_or_eager(torch_index_copy, rec, "torch_index_copy"),
        "contiguous_copy_same_bytes": bench_graph_or_eager(plain_copy, rec, "copy"),
    }
    # correctness
    cache_ops.write_kv(key, val, kc, vc, slots)
    ok = torch.equal(kflat[slots], key) and torch.equal(vflat[slots], val)
    rec.update(
        {
            "case": f"write_kv tokens={tokens} heads={heads}",
            "tokens": tokens,
            "kv_heads": heads,
            "bytes_moved": moved,
            "ms": times,
            "correct": ok,
            "tb_s": {k: moved / (t * 1e-3) / 1e12 for k, t in times.items()},
        }
    )
    rec["ours_vs_torch_index_copy"] = times["torch_index_copy"] / times["ours_write_kv"]
    rec["ours_frac_of_copy_ceiling"] = rec["tb_s"]["ours_write_kv"] / ceiling_tb_s
    return rec


@frees_device_memory
def measure_copy_blocks(layers, pairs, heads, ceiling_tb_s):
    torch.manual_seed(3)
    num_blocks = 64 if RUN.smoke else 2048
    caches = [torch.randn((num_blocks, BLOCK, heads, HEAD), dtype=RUN.dtype, device=RUN.dev) for _ in range(2 * layers)]
    perm = torch.randperm(num_blocks, device=RUN.dev)
    mapping = torch.stack([perm[:pairs], perm[pairs : 2 * pairs]], dim=1).contiguous()
    src, dst = mapping[:, 0].contiguous(), mapping[:, 1].contiguous()
    per_block = BLOCK * heads * HEAD * 2
    moved = 2 * pairs * per_block * len(caches)

    def torch_loop():
        for c in caches:
            c.index_copy_(0, dst, c.index_select(0, src))

    rec = {}
    times = {
        "ours_copy_blocks": bench_graph_or_eager(lambda: cache_ops.copy_blocks(caches, mapping), rec, "ours"),
        "torch_loop_index_copy": bench_graph_or_eager(torch_loop, rec, "torch_loop"),
    }
    cache_ops.copy_blocks(caches, mapping)
    ok = all(torch.equal(c[dst], c[src]) for c in caches)
    rec.update(
        {
            "case": f"copy_blocks layers={layers} pairs={pairs}",
            "bytes_moved": moved,
            "ms": times,
            "correct": ok,
            "tb_s": {k: moved / (t * 1e-3) / 1e12 for k, t in times.items()},
        }
    )
    rec["ours_vs_torch"] = times["torch_loop_index_copy"] / times["ours_copy_blocks"]
    rec["ours_frac_of_copy_ceiling"] = rec["tb_s"]["ours_copy_blocks"] / ceiling_tb_s
    return rec
