"""A/B sweep for the fourth tuning round: several KV heads per decode program (``heads_per_program``).

    python -m kernels.tune_perf4 --out DIR [--budget-s 400] [--cases all|NAME,NAME]

With ``heads_per_program = hp`` one program serves hp adjacent KV heads: each token's hp heads are read as one
contiguous run of ``hp x 256`` bytes (instead of ``hp`` separate 256-byte pieces by ``hp`` programs), and the q rows
of all hp heads share one block-diagonal tensor-core tile (no extra multiply-adds while ``group x hp <= 16``).

Times are medians of ``triton.testing.do_bench`` over CUDA-graph replays, as in ``kernels.bench`` (L2 cleared before
each replay); SDPA cuDNN on the contiguous copy is timed in the same process on the same data. Every variant's
output is NaN-poisoned first and compared with the default's. Writes ``DIR/tune4.json``; prints one line per
measurement. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback

import torch

from kernels import bench as B
from kernels import paged_attention as pa
from kernels.tune_perf3 import kernel_info, mixed_lens, t_graph

# (name, batch, q heads, KV heads, context or None for mixed lengths 1-8,192); the cases with missed
# targets first, then cases that guard against regressions
CASES = [
    ("gqa b16 ctx8192", 16, 32, 8, 8192),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
    ("gqa b1 ctx8192", 1, 32, 8, 8192),
    ("mixed gqa b16", 16, 32, 8, None),
    ("gqa b64 ctx8192", 64, 32, 8, 8192),
    ("mha b1 ctx8192", 1, 32, 32, 8192),
    ("mixed gqa b64", 64, 32, 8, None),
    ("gqa b16 ctx2048", 16, 32, 8, 2048),
    ("mha b64 ctx2048", 64, 32, 32, 2048),
    ("mixed mha b16", 16, 32, 32, None),
]


def variants(group: int, batch: int) -> list[tuple[str, dict]]:
    """(label, kwargs of paged_decode_attention); hp only where group x hp <= 16 (one 16-row tile)."""
    v = [("default", {})]
    for hp in (2, 4):
        if group * hp > 16:
            continue
        for bn, st in ((16, 3), (16, 4), (32, 3), (32, 4), (64, 3)):
            if hp == 4 and bn == 64:
                continue  # 64 KB per K tile
            v.append((f"hp{hp}_bn{bn}_s{st}", {"config": dict(heads_per_program=hp, block_n=bn, num_stages=st)}))
        v.append((f"hp{hp}_bn32_s3_w8", {"config": dict(heads_per_program=hp, block_n=32, num_stages=3,
                                                          num_warps=8)}))
        v.append((f"hp{hp}_bn32_s3_twok", {"config": dict(heads_per_program=hp, block_n=32, num_stages=3),
                                           "fused_reduce": False}))
    if batch == 1:  # few (sequence, head group) pairs: more, shorter partitions than MIN_PARTITION allows
        for hp in (2, 4):
            if group * hp > 16:
                continue
            for sp in (32, 64, 128):
                v.append((f"hp{hp}_bn16_s4_sp{sp}", {"config": dict(heads_per_program=hp, block_n=16, num_stages=4),
                                                     "num_splits": sp}))
    if batch >= 16:
        for hp in (2, 4):
            if group * hp > 16:
                continue
            for sp in (2, 4, 8):
                v.append((f"hp{hp}_bn32_s3_sp{sp}", {"config": dict(heads_per_program=hp, block_n=32, num_stages=3),
                                                     "num_splits": sp}))
    return v


def run(res, ceil, budget, names):
    from torch.nn.attention import SDPBackend
    out_all = []
    for name, b, hq, hkv, ctx in CASES:
        if names and name not in names:
            continue
        if budget.left() < 30:
            print("budget: stop", flush=True)
            break
        t0 = time.time()
        lens = [ctx] * b if ctx else mixed_lens(b)
        kv_bytes = B.decode_bytes(lens, hkv)
        c = B.build_decode_case(b, hq, hkv, lens)
        q, kc, vc, bt, sl, max_len = c["q"], c["k_cache"], c["v_cache"], c["bt"], c["sl"], c["max_len"]
        scale = B.HEAD ** -0.5
        rec = {"case": name, "kv_gb": kv_bytes / 1e9, "ms": {}, "diff": {}, "splits": {}}
        q4 = q.view(b, hq, 1, B.HEAD)
        f = lambda: B._run_sdpa(SDPBackend.CUDNN_ATTENTION, q4, c["k_contig"], c["v_contig"], c.get("mask"),  # noqa
                                gqa=hq != hkv)
        try:
            rec["ms"]["sdpa_cudnn"] = t_graph(f)
        except Exception as e:  # noqa: BLE001
            rec["sdpa_error"] = str(e)[:200]
        del c["k_contig"], c["v_contig"]
        out = torch.empty_like(q)
        ref = None
        vs = variants(hq // hkv, b)
        for label, kw in vs + [("default_repeat", {})]:
            if budget.left() < 20:
                break
            cfg = kw.get("config", {})
            hp = cfg.get("heads_per_program", 1)
            bn = cfg.get("block_n", 32 if b * hkv < 132 else 64)
            rec["splits"][label] = pa._choose_partition(b, hkv // hp, max_len, bn, pa._num_sms(q.device),
                                                        kw.get("num_splits"))[0]
            fn = lambda kw=kw: pa.paged_decode_attention(q, kc, vc, bt, sl, scale, max_seq_len=max_len, out=out, **kw)  # noqa
            try:
                out.fill_(float("nan"))
                o = fn().float().clone()
                if ref is None:
                    ref = o
                rec["diff"][label] = float("nan") if torch.isnan(o).any() else (o - ref).abs().max().item()
                rec["ms"][label] = t_graph(fn)
            except Exception as e:  # noqa: BLE001
                rec["ms"][label] = f"error: {type(e).__name__}: {str(e)[:160]}"
        sd = rec["ms"].get("sdpa_cudnn")
        line = [f"{name} {kv_bytes / 1e9:.3f} GB [{time.time() - t0:.0f}s] cudnn {sd}"]
        for k, t in rec["ms"].items():
            if isinstance(t, float):
                extra = f" x{sd / t:.3f}" if sd else ""
                line.append(f"  {k:22s} sp={rec['splits'].get(k, '-')!s:3s} {t:.4f} ms "
                            f"{100 * kv_bytes / t / 1e9 / ceil:.1f}%{extra} d={rec['diff'].get(k, 0):.2g}")
            else:
                line.append(f"  {k:22s} {t}")
        print("\n".join(line), flush=True)
        out_all.append(rec)
        res["decode"] = out_all
        del c, q, kc, vc, bt, out
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=400)
    ap.add_argument("--cases", default="all", help="'all' or a comma list of case names")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    budget = B.Budget(a.budget_s)
    res = {"env": B.env_info([])}
    res["copy_ceiling"] = B.copy_ceiling()
    ceil = res["copy_ceiling"]["tb_s"]
    print(f"copy ceiling {ceil:.3f} TB/s", flush=True)
    names = set() if a.cases == "all" else set(a.cases.split(","))
    try:
        run(res, ceil, budget, names)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    kernel_info(res)
    res["elapsed_s"] = time.time() - budget.t0
    with open(os.path.join(a.out, "tune4.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
