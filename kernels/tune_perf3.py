"""A/B sweeps for the third tuning round (issue #6's missed targets), one process, same data.

    python -m kernels.tune_perf3 --out DIR [--part decode,prefill,read] [--budget-s 400]

Times are medians of ``triton.testing.do_bench`` over CUDA-graph replays, as in ``kernels.bench``
(L2 cleared before each replay). Every variant's output is checked against the default's (NaN-poisoned
first). Writes ``DIR/tune.json``; prints one line per measurement. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
import traceback

import torch
import triton
import triton.language as tl

from kernels import bench as B
from kernels import paged_attention as pa

REP = 40


def t_graph(fn, rep=REP):
    return B._bench(B._graph(fn), rep=rep)


@triton.jit
def _read_kernel(x_ptr, out_ptr, n_per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = x_ptr + pid.to(tl.int64) * n_per_prog
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(0, n_per_prog, BLOCK, num_stages=4):
        acc += tl.load(base + i + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


def read_diag(res, ceil):
    """A streaming read of the same byte counts as the decode cases, timed the same way: what fraction
    of the copy ceiling a plain contiguous read reaches at that size under this timing method."""
    out = []
    for gb in (0.0336, 0.134, 0.32, 0.537, 1.05, 2.15):
        progs = 132 * 4
        block = 4096
        n = int(gb * 1e9 / 2) // (progs * block) * (progs * block)
        x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
        o = torch.empty(progs, dtype=torch.float32, device="cuda")
        fn = lambda: _read_kernel[(progs,)](x, o, n // progs, BLOCK=block, num_warps=8)  # noqa: E731
        t = t_graph(fn, rep=100)
        ok = abs(o.double().sum().item() - x.double().sum().item()) < 1e-2 * math.sqrt(n)
        r = {"gb": 2 * n / 1e9, "ms": t, "tb_s": 2 * n / t / 1e9, "frac_of_copy": 2 * n / t / 1e9 / ceil, "sum_ok": ok}
        print(
            f"read {r['gb']:.4f} GB {t:.4f} ms {r['tb_s']:.3f} TB/s {100 * r['frac_of_copy']:.1f}% of copy ok={ok}",
            flush=True,
        )
        out.append(r)
        del x, o
    res["read_diag"] = out


def decode_cases():
    """(name, batch, hq, hkv, lens, sweep): the whole decode grid of kernels.bench, b1 cases swept."""
    cases = []
    for hq, hkv in ((32, 32), (32, 8)):
        lay = "mha" if hq == hkv else "gqa"
        for b in (1, 16, 64, 256):
            for L in (512, 2048, 8192):
                if b * L * hkv * 512 > 20e9:
                    continue
                cases.append((f"{lay} b{b} ctx{L}", b, hq, hkv, [L] * b, b == 1 and L == 8192))
        for b in (16, 64, 256):
            cases.append((f"mixed {lay} b{b}", b, hq, hkv, None, False))
    return cases


def mixed_lens(b):
    rng = random.Random(1000 + b)
    return [rng.randint(1, 8192) for _ in range(b)]


OLD = dict(SPLIT_MODEL="waves", FUSED_DEFAULT="one_wave", FUSED_MAXNREG=None)
NEW = dict(SPLIT_MODEL="per_sm", FUSED_DEFAULT="always", FUSED_MAXNREG=128)


def decode_variants(sweep_splits, max_len, batch):
    # (label, module knobs, kwargs)
    v = [
        ("new", NEW, {}),
        ("old", OLD, {}),
        ("new_waves", dict(NEW, SPLIT_MODEL="waves"), {}),
        ("new_twok", NEW, {"fused_reduce": False}),
    ]
    if batch <= 16 or sweep_splits:
        v.append(("new_bn32_s5", NEW, {"config": dict(block_n=32, num_stages=5)}))
        v.append(("new_bn32_s3", NEW, {"config": dict(block_n=32, num_stages=3)}))
        v.append(("new_fused_nocap", dict(NEW, FUSED_MAXNREG=None), {}))
    if sweep_splits:
        for sp in (4, 6, 8, 12, 16, 24, 32):
            for tag, cfg in (
                ("bn64s3", {}),
                ("bn32s5", dict(block_n=32, num_stages=5)),
                ("bn32s3", dict(block_n=32, num_stages=3)),
            ):
                v.append((f"sp{sp}_{tag}", NEW, {"config": cfg, "num_splits": sp}))
    return v


def time_cudnn(rec, c, b, hq, hkv):
    """SDPA cuDNN on the case's contiguous copy, timed like the variants (``rec['ms']['sdpa_cudnn']``); the copy is
    freed afterwards."""
    from torch.nn.attention import SDPBackend

    q4 = c["q"].view(b, hq, 1, B.HEAD)
    f = lambda: B._run_sdpa(
        SDPBackend.CUDNN_ATTENTION,
        q4,
        c["k_contig"],
        c["v_contig"],
        c.get("mask"),  # noqa
        gqa=hq != hkv,
    )
    try:
        rec["ms"]["sdpa_cudnn"] = t_graph(f)
    except Exception as e:  # noqa: BLE001
        rec["sdpa_error"] = str(e)[:200]
    del c["k_contig"], c["v_contig"]


def measure_variant(rec, label, fn, out, ref):
    """Run ``fn`` once into a NaN-poisoned ``out``, record its max difference from ``ref`` (the first variant's
    output when ``ref`` is None) and its graph-replay time under ``label``; errors are recorded, not raised.
    Returns the reference output."""
    try:
        out.fill_(float("nan"))
        o = fn().float().clone()
        if ref is None:
            ref = o
        rec["diff"][label] = float("nan") if torch.isnan(o).any() else (o - ref).abs().max().item()
        rec["ms"][label] = t_graph(fn)
    except Exception as e:  # noqa: BLE001
        rec["ms"][label] = f"error: {type(e).__name__}: {str(e)[:160]}"
    return ref


def print_case(name, kv_bytes, t0, rec, ceil, width):
    """One line per variant: split count, time, fraction of the copy ceiling, speed vs cuDNN, max difference."""
    sd = rec["ms"].get("sdpa_cudnn")
    line = [f"{name} {kv_bytes / 1e9:.3f} GB [{time.time() - t0:.0f}s] cudnn {sd}"]
    for k, t in rec["ms"].items():
        if isinstance(t, float):
            extra = f" x{sd / t:.3f}" if sd else ""
            line.append(
                f"  {k:{width}s} sp={rec['splits'].get(k, '-')!s:3s} {t:.4f} ms "
                f"{100 * kv_bytes / t / 1e9 / ceil:.1f}%{extra} d={rec['diff'].get(k, 0):.2g}"
            )
        else:
            line.append(f"  {k:{width}s} {t}")
    print("\n".join(line), flush=True)


def run_decode(res, ceil, budget):
    out_all = []
    for name, b, hq, hkv, lens, sw in decode_cases():
        if budget.left() < 30:
            print("budget: stop decode", flush=True)
            break
        t0 = time.time()
        lens = lens or mixed_lens(b)
        kv_bytes = B.decode_bytes(lens, hkv)
        lmax = math.ceil(max(lens) / B.BLOCK) * B.BLOCK
        need_contig = b * lmax * hkv * B.HEAD * 4 <= 12e9
        c = B.build_decode_case(b, hq, hkv, lens, need_contig=need_contig)
        q, kc, vc, bt, sl, max_len = c["q"], c["k_cache"], c["v_cache"], c["bt"], c["sl"], c["max_len"]
        scale = B.HEAD**-0.5
        rec = {"case": name, "kv_gb": kv_bytes / 1e9, "ms": {}, "diff": {}, "splits": {}}
        if need_contig:
            time_cudnn(rec, c, b, hq, hkv)
        out = torch.empty_like(q)
        ref = None
        variants = decode_variants(sw, max_len, b)
        for label, knobs, kw in variants + [("new_repeat", NEW, {}), ("old_repeat", OLD, {})]:
            if budget.left() < 20:
                break
            for k_, v_ in knobs.items():
                setattr(pa, k_, v_)
            cfg = kw.get("config", {})
            rec["splits"][label] = pa._choose_partition(
                b, hkv, max_len, cfg.get("block_n", 64), pa._num_sms(q.device), kw.get("num_splits")
            )[0]
            fn = lambda kw=kw: pa.paged_decode_attention(q, kc, vc, bt, sl, scale, max_seq_len=max_len, out=out, **kw)  # noqa
            ref = measure_variant(rec, label, fn, out, ref)
        for k_, v_ in NEW.items():
            setattr(pa, k_, v_)
        print_case(name, kv_bytes, t0, rec, ceil, width=18)
        out_all.append(rec)
        res["decode"] = out_all
        del c, q, kc, vc, bt, out
        torch.cuda.empty_cache()


PREFILL_CFGS = [
    # block_m, block_n, warps, stages, tma, fold
    (64, 64, 4, 3, True, False),
    (64, 64, 4, 3, True, True),
    (64, 32, 4, 4, True, True),
    (64, 32, 4, 5, True, True),
    (128, 128, 8, 3, True, True),
]


def _prefill_extra(extra_set: str) -> list:
    """Variants of a round's idea, each timed twice beside the defaults (``--prefill-extra``)."""
    if extra_set == "exp16":  # round 5: packed 16-bit exp2
        x = {"exp16": True}
    elif extra_set == "lazy":  # round 6: lazy rescale of the running maximum (threshold 8, log2 units)
        x = {"lazy_rescale": True}
    else:  # round 6: software-pipelined score dots (new-K/V path only)
        x = {"pipeline_qk": True}
    tag = extra_set
    big = dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
    out = [(f"newkv_{tag}", {"nk": True, "config": dict(x)})]
    if extra_set != "pipe":
        out.append((f"paged_{tag}", {"config": dict(x)}))
    out.append((f"newkv_m128_n128_w8_s3_{tag}", {"nk": True, "config": dict(big, **x)}))
    if extra_set in ("lazy", "pipe"):
        out += [
            (f"newkv_s2_{tag}", {"nk": True, "config": dict(num_stages=2, **x)}),
            (f"newkv_s4_{tag}", {"nk": True, "config": dict(num_stages=4, **x)}),
        ]
    if extra_set == "lazy":
        out.append((f"newkv_m128_n128_w8_s3_ws_{tag}", {"nk": True, "config": dict(big, warp_specialize=True, **x)}))
    if extra_set == "pipe":
        out += [
            (
                f"newkv_m128_n64_w8_s2_{tag}",
                {"nk": True, "config": dict(block_m=128, block_n=64, num_warps=8, num_stages=2, **x)},
            ),
            (f"newkv_m64_n32_w4_s4_{tag}", {"nk": True, "config": dict(block_n=32, num_stages=4, **x)}),
        ]
    out += [("newkv_default_r", {"nk": True}), (f"newkv_{tag}_r", {"nk": True, "config": dict(x)})]
    if extra_set != "pipe":
        out += [("paged_default_r", {}), (f"paged_{tag}_r", {"config": dict(x)})]
    return out


PREFILL_CASES = [
    ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, True),
    ("prefill mha 4x1024 ctx3072", 4, 32, 32, 3072, 1024, False),
]
# round 6, --prefill-extra shapes: how the context/new-token ratio decides between 64- and 128-row tiles
SHAPE_CASES = [
    ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, False),
    ("prefill mha 4x1024 ctx1024", 4, 32, 32, 1024, 1024, False),
    ("prefill mha 4x1024 ctx3072", 4, 32, 32, 3072, 1024, False),
    ("prefill gqa 4x1024 ctx3072", 4, 32, 8, 3072, 1024, False),
    ("prefill mha 4x512 ctx3584", 4, 32, 32, 3584, 512, False),
    ("chunked mha 16x256 ctx1792", 16, 32, 32, 1792, 256, False),
]


# round 7, --prefill-extra wgmma: the Gluon warp-group-MMA kernel on pure prefill
WGMMA_PAGED_CASES = [
    ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, False),
    ("prefill mha 4x1024 ctx3072", 4, 32, 32, 3072, 1024, False),
    ("prefill gqa 4x1024 ctx3072", 4, 32, 8, 3072, 1024, False),
    ("chunked mha 16x256 ctx1792", 16, 32, 32, 1792, 256, False),
    ("prefill mha 16x512 ctx0", 16, 32, 32, 0, 512, False),
]


def _wgmma_paged_variants() -> list:
    """The Triton paged kernel against the Gluon kernel's paged form, and the new-K/V path's Triton default against
    the Gluon kernel's mixed form (its contiguous form at context 0)."""
    out = [
        ("paged_default", {}),
        ("paged_wgmma", {"config": {"wgmma": True}}),
        ("paged_wgmma_r232", {"config": {"wgmma": {"consumer_regs": 232, "loader_regs": 40}}}),
        ("paged_wgmma_nopingpong", {"config": {"wgmma": {"pingpong": False}}}),
        ("newkv_default", {"nk": True}),
        ("newkv_wgmma_mixed", {"nk": True, "config": {"wgmma": True}}),
        ("paged_default_r", {}),
        ("paged_wgmma_r", {"config": {"wgmma": True}}),
        ("newkv_wgmma_mixed_r", {"nk": True, "config": {"wgmma": True}}),
    ]
    return out


WGMMA_CASES = [
    ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, False),
    ("prefill gqa 4x2048 ctx0", 4, 32, 8, 0, 2048, False),
    ("prefill mha 1x8192 ctx0", 1, 32, 32, 0, 8192, False),
    ("prefill mha 16x512 ctx0", 16, 32, 32, 0, 512, False),
]


def _wgmma_variants() -> list:
    """The Triton new-K/V default against the Gluon kernel's shapes and its unpipelined form, defaults twice."""
    ws = {"warp_specialize": True}
    pers = dict(ws, persistent=True)
    wg = [
        ("wgmma_ws", ws),
        ("wgmma_ws_persistent", pers),
        ("wgmma_ws_persistent_rr_q1", dict(pers, snake=False, q_buffers=1)),
        ("wgmma_ws_persistent_q1", dict(pers, q_buffers=1)),
        ("wgmma_ws_persistent_pingpong", dict(pers, pingpong=True)),
        ("wgmma_ws_pingpong", dict(ws, pingpong=True)),
    ]
    out = [("newkv_default", {"nk": True})]
    out += [(f"newkv_{name}", {"nk": True, "config": {"wgmma": cfg}}) for name, cfg in wg]
    out += [
        ("newkv_default_r", {"nk": True}),
        ("newkv_wgmma_ws_persistent_r", {"nk": True, "config": {"wgmma": pers}}),
        ("newkv_wgmma_ws_persistent_pingpong_r", {"nk": True, "config": {"wgmma": dict(pers, pingpong=True)}}),
    ]
    return out


def _shape_variants() -> list:
    """64- against 128-row tiles on both prefill paths, the defaults and the 128 x 128 shapes timed twice."""
    wide = dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
    shapes = [
        ("m128_n128_w8_s3", wide),
        ("m128_n64_w8_s3", dict(wide, block_n=64)),
        ("m128_n128_w8_s2", dict(wide, num_stages=2)),
    ]
    out = []
    for tag, nk in (("paged", False), ("newkv", True)):
        base = {"nk": True} if nk else {}
        out += [(f"{tag}_default", dict(base))] + [(f"{tag}_{name}", dict(base, config=cfg)) for name, cfg in shapes]
    out += [
        ("paged_default_r", {}),
        ("paged_m128_n128_w8_s3_r", {"config": wide}),
        ("newkv_default_r", {"nk": True}),
        ("newkv_m128_n128_w8_s3_r", {"nk": True, "config": wide}),
    ]
    return out


def run_prefill(res, budget, extra_set="pipe"):
    from torch.nn.attention import SDPBackend

    out_all = []
    cases = {"shapes": SHAPE_CASES, "wgmma": WGMMA_CASES, "wgmma_paged": WGMMA_PAGED_CASES}.get(
        extra_set, PREFILL_CASES
    )
    only = os.environ.get("PREFILL_CASES")  # e.g. "gqa,chunked": a subset by name
    if only:
        cases = [c for c in cases if any(w in c[0] for w in only.split(","))]
    for name, batch, hq, hkv, ctx, new, sweep in cases:
        torch.manual_seed(1)
        total_len = ctx + new
        nblk = math.ceil(total_len / B.BLOCK)
        nb = batch * nblk
        k_cache = torch.randn((nb, B.BLOCK, hkv, B.HEAD), dtype=B.DTYPE, device="cuda")
        v_cache = torch.randn_like(k_cache)
        bt = torch.randperm(nb, device="cuda").to(torch.int32).view(batch, nblk)
        q = torch.randn((batch * new, hq, B.HEAD), dtype=B.DTYPE, device="cuda")
        cu = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * new
        ctx_t = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        scale = B.HEAD**-0.5
        out = torch.empty_like(q)
        kc = k_cache[bt.long()].view(batch, nblk * B.BLOCK, hkv, B.HEAD)[:, :total_len].transpose(1, 2).contiguous()
        vc = v_cache[bt.long()].view(batch, nblk * B.BLOCK, hkv, B.HEAD)[:, :total_len].transpose(1, 2).contiguous()
        kn = kc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, B.HEAD).contiguous()
        vn = vc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, B.HEAD).contiguous()
        keys_seen = batch * (new * ctx + new * (new + 1) // 2)
        flops = 4 * B.HEAD * hq * keys_seen
        q4 = q.view(batch, new, hq, B.HEAD).transpose(1, 2).contiguous()
        if ctx == 0:
            mask, causal = None, True
        else:
            from torch.nn.attention.bias import causal_lower_right

            mask, causal = causal_lower_right(new, total_len), False
        rec = {"case": name, "flops": flops, "ms": {}, "diff": {}}
        gqa = hq != hkv
        ref = B._run_sdpa(SDPBackend.CUDNN_ATTENTION, q4, kc, vc, mask, is_causal=causal, gqa=gqa).float()
        rec["ms"]["sdpa_cudnn"] = t_graph(
            lambda: B._run_sdpa(SDPBackend.CUDNN_ATTENTION, q4, kc, vc, mask, is_causal=causal, gqa=gqa)
        )
        try:
            rec["ms"]["sdpa_flash"] = t_graph(
                lambda: B._run_sdpa(SDPBackend.FLASH_ATTENTION, q4, kc, vc, mask, is_causal=causal, gqa=gqa)
            )
        except RuntimeError as e:  # flash takes no explicit mask
            rec["ms"]["sdpa_flash"] = f"error: {str(e).strip()[-200:]}"

        variants = [
            ("paged_default", {}),
            ("paged_nofold", {"config": {"fold_scale": False}}),
            ("newkv_default", {"nk": True}),
        ]
        if extra_set == "shapes":
            variants = _shape_variants()
        elif extra_set == "wgmma":
            variants = _wgmma_variants()
        elif extra_set == "wgmma_paged":
            variants = _wgmma_paged_variants()
        elif sweep:
            for bm, bn, nw, ns, tma, fold in PREFILL_CFGS:
                variants.append(
                    (
                        f"newkv_m{bm}_n{bn}_w{nw}_s{ns}{'_tma' if tma else '_ptr'}{'_fold' if fold else ''}",
                        {
                            "nk": True,
                            "config": dict(
                                block_m=bm, block_n=bn, num_warps=nw, num_stages=ns, tma=tma, fold_scale=fold
                            ),
                        },
                    )
                )
        else:
            variants.append(("newkv_nofold", {"nk": True, "config": {"fold_scale": False}}))
        if extra_set not in ("shapes", "wgmma", "wgmma_paged"):
            variants += _prefill_extra(extra_set)
        for label, kw in variants:
            if budget.left() < 20:
                break
            kw = dict(kw)
            nk = kw.pop("nk", False)
            extra = dict(new_key=kn, new_value=vn, max_context_len=ctx) if nk else {}
            fn = lambda kw=kw, extra=extra: pa.paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                bt,
                cu,
                ctx_t,
                scale,  # noqa
                max_query_len=new,
                out=out,
                **kw,
                **extra,
            )
            try:
                out.fill_(float("nan"))
                o = fn().float().view(batch, new, hq, B.HEAD).transpose(1, 2)
                rec["diff"][label] = float("nan") if torch.isnan(o).any() else (o - ref).abs().max().item()
                rec["ms"][label] = t_graph(fn)
            except Exception as e:  # noqa: BLE001
                rec["ms"][label] = f"error: {type(e).__name__}: {str(e).strip()[-600:]}"
        sd = rec["ms"]["sdpa_cudnn"]  # the baseline of the x column (the flash column may be an error)
        lines = [name]
        for k, t in rec["ms"].items():
            if isinstance(t, float):
                lines.append(
                    f"  {k:36s} {t:.4f} ms {flops / t / 1e9:.1f} TFLOP/s x{sd / t:.3f} d={rec['diff'].get(k, 0):.3g}"
                )
            else:
                lines.append(f"  {k:36s} {t}")
        print("\n".join(lines), flush=True)
        out_all.append(rec)
        res["prefill"] = out_all
        del k_cache, v_cache, kc, vc, kn, vn, q4, out, q
        torch.cuda.empty_cache()


def kernel_info(res):
    info = []
    from kernels import decode_balanced as db

    for fn in (
        pa._decode_kernel,
        pa._prefill_newkv_kernel,
        pa._prefill_kernel,
        db._balanced_decode_kernel,
        db._balanced_reduce_kernel,
    ):
        try:
            for dev, caches in fn.device_caches.items():
                for key, k in caches[0].items():
                    md = k.metadata
                    info.append(
                        {
                            "fn": fn.__name__,
                            "num_warps": md.num_warps,
                            "num_stages": md.num_stages,
                            "shared": md.shared,
                            "n_regs": getattr(k, "n_regs", None),
                            "n_spills": getattr(k, "n_spills", None),
                            "key": str(key)[:600],
                        }
                    )
        except Exception as e:  # noqa: BLE001
            info.append({"fn": fn.__name__, "error": str(e)[:200]})
    res["kernels"] = info
    for i in info:
        print(
            i.get("fn"),
            i.get("num_warps"),
            i.get("num_stages"),
            i.get("shared"),
            i.get("n_regs"),
            i.get("n_spills"),
            str(i.get("key", i.get("error")))[:300],
        )


def start(out_dir, budget_s):
    """Make ``out_dir``; return the time budget, the result record (environment, copy ceiling) and the ceiling
    (TB/s)."""
    os.makedirs(out_dir, exist_ok=True)
    budget = B.Budget(budget_s)
    res = {"env": B.env_info([])}
    res["copy_ceiling"] = B.copy_ceiling()
    ceil = res["copy_ceiling"]["tb_s"]
    print(f"copy ceiling {ceil:.3f} TB/s", flush=True)
    return budget, res, ceil


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--part", default="read,decode,prefill")
    ap.add_argument("--budget-s", type=float, default=400)
    ap.add_argument(
        "--prefill-extra",
        choices=("shapes", "pipe", "lazy", "exp16", "wgmma", "wgmma_paged"),
        default="pipe",
        help="a round's prefill variants: 64- vs 128-row tiles over context/new ratios, pipelined "
        "score dots or lazy rescale (round 6), packed exp2 (round 5), the Gluon kernel (round 7)",
    )
    a = ap.parse_args()
    budget, res, ceil = start(a.out, a.budget_s)
    parts = a.part.split(",")

    def save():
        with open(os.path.join(a.out, "tune.json"), "w") as fh:
            json.dump(res, fh, indent=1)

    for part, f in (
        ("read", lambda: read_diag(res, ceil)),
        ("prefill", lambda: run_prefill(res, budget, a.prefill_extra)),
        ("decode", lambda: run_decode(res, ceil, budget)),
    ):
        if part in parts:
            try:
                f()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
            save()
    kernel_info(res)
    res["elapsed_s"] = time.time() - budget.t0
    save()


if __name__ == "__main__":
    main()
