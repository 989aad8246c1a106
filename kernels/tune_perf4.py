"""A/B sweeps for the fourth and fifth tuning rounds: explicit register prefetch in decode (``prefetch``), several
KV heads per decode program (``heads_per_program``), and (round 5, ``--mode balanced``) the balanced stream-K decode.

    python -m kernels.tune_perf4 --out DIR [--mode heads|uniform|warps|early|balanced|balanced2] [--budget-s 400]
                                 [--cases all|NAME,NAME]

With ``heads_per_program = hp`` one program serves hp adjacent KV heads: each token's hp heads are read as one
contiguous run of ``hp x 256`` bytes (instead of ``hp`` separate 256-byte pieces by ``hp`` programs), and the q rows
of all hp heads share one block-diagonal tensor-core tile (no extra multiply-adds while ``group x hp <= 16``).

Times are medians of ``triton.testing.do_bench`` over CUDA-graph replays, as in ``kernels.bench`` (L2 cleared before
each replay); SDPA cuDNN on the contiguous copy is timed in the same process on the same data. Every variant's
output is NaN-poisoned first and compared with the default's. Writes ``DIR/tune4_MODE.json``; prints one line per
measurement. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import torch

from kernels import bench as B
from kernels import paged_attention as pa
from kernels.tune_perf3 import kernel_info, measure_variant, mixed_lens, print_case, start, time_cudnn

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
    """(label, kwargs of paged_decode_attention): explicit register prefetch (``prefetch``) by tile size,
    warps and pipelining stages, a split sweep at batch >= 16, and two several-heads-per-program shapes."""
    v = [("default", {})]
    for bn, nw, st in ((32, 4, 1), (64, 4, 1), (64, 8, 1), (128, 8, 1), (16, 4, 1), (32, 4, 2), (64, 8, 2)):
        v.append((f"pf_bn{bn}_w{nw}_s{st}", {"config": dict(prefetch=True, block_n=bn, num_warps=nw, num_stages=st)}))
    if batch >= 16:
        for sp in (2, 3, 4, 8):
            v.append(
                (
                    f"pf_bn64_w8_s1_sp{sp}",
                    {"config": dict(prefetch=True, block_n=64, num_warps=8, num_stages=1), "num_splits": sp},
                )
            )
    if batch == 1:
        for sp in (16, 64):
            v.append(
                (
                    f"pf_bn32_w4_s1_sp{sp}",
                    {"config": dict(prefetch=True, block_n=32, num_warps=4, num_stages=1), "num_splits": sp},
                )
            )
    hp = 16 // group if group <= 8 else 1
    if hp > 1:  # round-4 first call's best several-heads shapes, again beside the prefetch
        hp = min(hp, 4)
        v.append((f"hp{hp}_bn32_s3", {"config": dict(heads_per_program=hp, block_n=32, num_stages=3)}))
        v.append(
            (
                f"hp{hp}_pf_bn32_w4_s1",
                {"config": dict(heads_per_program=hp, prefetch=True, block_n=32, num_warps=4, num_stages=1)},
            )
        )
    return v


# round 4, call c: the device-side uniform test (``auto_uniform``, default on) against the same kernel without it
# and with the host hint, on the cases it can change (a batch that fills a wave, contexts past the cap)
UNIFORM_CASES = [
    ("gqa b64 ctx8192", 64, 32, 8, 8192),
    ("gqa b256 ctx8192", 256, 32, 8, 8192),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
    ("mha b64 ctx8192", 64, 32, 32, 8192),
    ("mixed gqa b64", 64, 32, 8, None),
    ("mixed gqa b256", 256, 32, 8, None),
    ("mixed mha b16", 16, 32, 32, None),
    ("mixed mha b64", 64, 32, 32, None),
    ("gqa b64 ctx2048", 64, 32, 8, 2048),
]


def uniform_variants(lens: list[int]) -> list[tuple[str, dict]]:
    return [
        ("default", {}),
        ("no_auto_uniform", {"config": {"auto_uniform": False}}),
        ("hint", {"min_seq_len": min(lens)}),
    ]


# round 4, call d: fewer warps per program (more programs per SM) on the batch-1 and batch-16 cases
WARPS_CASES = [
    ("gqa b16 ctx8192", 16, 32, 8, 8192),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
    ("gqa b1 ctx8192", 1, 32, 8, 8192),
    ("mha b1 ctx8192", 1, 32, 32, 8192),
    ("mixed gqa b16", 16, 32, 8, None),
]


def warps_variants(batch: int) -> list[tuple[str, dict]]:
    v = [("default", {})]
    for nw, bn, st in ((2, 32, 5), (2, 32, 3), (2, 64, 3), (2, 16, 5), (1, 32, 3), (1, 16, 4)):
        v.append((f"w{nw}_bn{bn}_s{st}", {"config": dict(num_warps=nw, block_n=bn, num_stages=st)}))
    for sp in (4, 8) if batch > 1 else (16, 64):
        v.append((f"w2_bn32_s5_sp{sp}", {"config": dict(num_warps=2, block_n=32, num_stages=5), "num_splits": sp}))
    return v


# round 4, call e: the prefetch path with the first tile's block ids loaded before the length arrives
# (``early_bt``, on by default with ``prefetch``), on the short-program grids where start-up latency counts most
EARLY_CASES = [
    ("gqa b1 ctx8192", 1, 32, 8, 8192),
    ("gqa b1 ctx2048", 1, 32, 8, 2048),
    ("gqa b1 ctx512", 1, 32, 8, 512),
    ("mha b1 ctx8192", 1, 32, 32, 8192),
    ("mha b1 ctx2048", 1, 32, 32, 2048),
    ("gqa b16 ctx8192", 16, 32, 8, 8192),
    ("gqa b16 ctx2048", 16, 32, 8, 2048),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
]


def early_variants(batch: int) -> list[tuple[str, dict]]:
    v = [("default", {})]
    for bn, st in ((32, 1), (64, 1), (32, 3)):
        for early in (True, False):
            v.append(
                (
                    f"pf_bn{bn}_s{st}{'' if early else '_late'}",
                    {"config": dict(prefetch=True, block_n=bn, num_warps=4, num_stages=st, early_bt=early)},
                )
            )
    return v + [(f"{label}_r", kw) for label, kw in v]  # every variant twice: the spread between repeats


# round 5: the balanced (stream-K) decode, one program per resident slot with equal shares of the tiles
# (``config={"balanced": True}``), against the default grid; the batch-16 and mixed cases first
BALANCED_CASES = [
    ("gqa b16 ctx8192", 16, 32, 8, 8192),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
    ("mixed gqa b16", 16, 32, 8, None),
    ("mixed mha b16", 16, 32, 32, None),
    ("gqa b64 ctx8192", 64, 32, 8, 8192),
    ("mixed gqa b64", 64, 32, 8, None),
    ("mixed mha b64", 64, 32, 32, None),
    ("gqa b16 ctx2048", 16, 32, 8, 2048),
    ("mha b64 ctx2048", 64, 32, 32, 2048),
    ("mha b64 ctx8192", 64, 32, 32, 8192),
    ("mixed gqa b256", 256, 32, 8, None),
    ("gqa b1 ctx8192", 1, 32, 8, 8192),
    ("mha b1 ctx8192", 1, 32, 32, 8192),
    ("mha b16 ctx512", 16, 32, 32, 512),
]


def balanced_variants() -> list[tuple[str, dict]]:
    v = [("default", {}), ("bal", {"config": {"balanced": True}})]
    for pps in (2, 3, 4, 5):
        v.append((f"bal_pps{pps}", {"config": {"balanced": True, "programs_per_sm": pps}}))
    for bn, st, nw in ((32, 5, 4), (64, 4, 4), (128, 3, 8), (64, 3, 8)):
        v.append(
            (
                f"bal_bn{bn}_s{st}_w{nw}",
                {"config": {"balanced": True, "block_n": bn, "num_stages": st, "num_warps": nw}},
            )
        )
    return v + [("bal_r", {"config": {"balanced": True}})]


# round 5, call b: the register cap that gives the balanced kernel 4 resident programs per SM at batch 16, and the
# ``min_seq_len`` hint's default (balanced on batches the hint marks as mixed, see pa._balanced_default)
BALANCED2_CASES = [
    ("mixed gqa b16", 16, 32, 8, None),
    ("mixed mha b16", 16, 32, 32, None),
    ("mixed gqa b64", 64, 32, 8, None),
    ("mixed mha b64", 64, 32, 32, None),
    ("mixed gqa b256", 256, 32, 8, None),
    ("mixed mha b256", 256, 32, 32, None),
    ("gqa b16 ctx8192", 16, 32, 8, 8192),
    ("mha b16 ctx8192", 16, 32, 32, 8192),
]


def balanced2_variants(lens: list[int]) -> list[tuple[str, dict]]:
    v = [
        ("default", {}),
        ("hint", {"min_seq_len": min(lens)}),
        ("bal", {"config": {"balanced": True}}),
        ("bal_nreg128", {"config": {"balanced": True, "maxnreg": 128}}),
        ("bal_nreg128_bn32_s5", {"config": {"balanced": True, "maxnreg": 128, "block_n": 32, "num_stages": 5}}),
        ("bal_nreg120", {"config": {"balanced": True, "maxnreg": 120}}),
    ]
    return v + [(f"{label}_r", kw) for label, kw in v[:3]]


def run(res, ceil, budget, names, mode="heads"):
    out_all = []
    for name, b, hq, hkv, ctx in {
        "uniform": UNIFORM_CASES,
        "warps": WARPS_CASES,
        "early": EARLY_CASES,
        "balanced": BALANCED_CASES,
        "balanced2": BALANCED2_CASES,
    }.get(mode, CASES):
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
        scale = B.HEAD**-0.5
        rec = {"case": name, "kv_gb": kv_bytes / 1e9, "ms": {}, "diff": {}, "splits": {}}
        time_cudnn(rec, c, b, hq, hkv)
        out = torch.empty_like(q)
        ref = None
        vs = {
            "uniform": lambda: uniform_variants(lens),
            "warps": lambda: warps_variants(b),
            "early": lambda: early_variants(b),
            "balanced": balanced_variants,
            "balanced2": lambda: balanced2_variants(lens),
        }.get(mode, lambda: variants(hq // hkv, b))()
        for label, kw in vs + [("default_repeat", {}), ("no_auto_uniform_repeat", {"config": {"auto_uniform": False}})]:
            if budget.left() < 20:
                break
            cfg = kw.get("config", {})
            hp = cfg.get("heads_per_program", 1)
            bn = cfg.get("block_n", 32 if b * hkv < 132 else 64)
            plan = pa._split_plan(
                b,
                hkv // hp,
                max_len,
                bn,
                pa._num_sms(q.device),
                kw.get("num_splits"),
                kw.get("min_seq_len"),
                cfg.get("auto_uniform", True),
            )
            bal = cfg.get(
                "balanced",
                "min_seq_len" in kw
                and "fused_reduce" not in kw
                and pa._balanced_default(b, hkv, max_len, kw["min_seq_len"], kw.get("num_splits"), hp),
            )
            rec["splits"][label] = "bal" if bal else f"{plan[0]}u" if plan[2] else plan[0]
            fn = lambda kw=kw: pa.paged_decode_attention(q, kc, vc, bt, sl, scale, max_seq_len=max_len, out=out, **kw)  # noqa
            ref = measure_variant(rec, label, fn, out, ref)
        print_case(name, kv_bytes, t0, rec, ceil, width=22)
        out_all.append(rec)
        res["decode"] = out_all
        del c, q, kc, vc, bt, out
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=400)
    ap.add_argument("--cases", default="all", help="'all' or a comma list of case names")
    ap.add_argument(
        "--mode",
        default="heads",
        choices=["heads", "uniform", "warps", "early", "balanced", "balanced2"],
        help="heads: calls a and b (heads per program, prefetch); uniform: call c (auto_uniform); "
        "warps: call d (1 or 2 warps per program); early: call e (prefetch, early block ids); "
        "balanced: round 5 (the balanced stream-K decode); balanced2: its register cap and hint default",
    )
    a = ap.parse_args()
    budget, res, ceil = start(a.out, a.budget_s)
    names = set() if a.cases == "all" else set(a.cases.split(","))
    try:
        run(res, ceil, budget, names, a.mode)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    kernel_info(res)
    from kernels import decode_balanced as db

    res["balanced_resident_per_sm"] = {str(k): v for k, v in db._RESIDENT.items()}
    for k, v in db._RESIDENT.items():
        print("balanced resident programs per SM", v, str(k)[:200])
    res["elapsed_s"] = time.time() - budget.t0
    with open(os.path.join(a.out, f"tune4_{a.mode}.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
