"""Sliding-window attention on the GPU: our paged decode and prefill kernels with ``sliding_window`` against torch SDPA
with a sliding-window mask and FlexAttention with a sliding-window block mask, on the same data, in one process.

The decode and the prefill measurement share the paged cache set-up and the freed-block poisoning here; the
alternatives' timing is in `kernels.bench.sliding_window_baselines`, the byte model in
`kernels.bench.sliding_window_bytes`, the cases in `kernels.bench.cases`, the targets and the report in
`kernels.bench.sliding_window_report`.

    python -m kernels.bench sliding-window --out DIR [--budget-s 900] [--only decode,prefill] [--quick] [--no-flex]
    TRITON_INTERPRET=1 python -m kernels.bench sliding-window --cpu-smoke --out DIR   # tiny shapes, no GPU

Writes ``DIR/sliding_window.json`` (every number, the environment and the command) and ``DIR/sliding_window.md``
(tables and the targets, met or missed). Times are medians of ``triton.testing.do_bench`` over CUDA-graph replays
(``kernels.bench.timing``), as in the main benchmark.

What runs, per case (bf16, head size 128, 16-token blocks):

* ours: ``paged_decode_attention`` / ``paged_prefill_attention`` with ``sliding_window`` on a scattered block table
  whose entries for blocks wholly before the window point at a NaN block (a sliding-window cache has freed them);
  a NaN in the output would show a read outside the window. Decode also runs forced balanced (batch >= 16), and
  without the window on the intact table (``ours_full_attention``: how much the window saves). Prefill also runs
  the new-K/V path (``new_key``/``new_value``).
* SDPA, on contiguous ``[B, H, L, D]`` copies: ``sdpa_masked_*`` over the whole context with a boolean
  sliding-window mask (flash takes no mask, so efficient and cuDNN), and ``sdpa_window_*`` over a copy holding only
  the keys some query sees (decode: the last ``W``; prefill: from the first new token's window on), masked only where
  needed. The latter is SDPA's best case: the gather it needs is not timed.
* FlexAttention (``torch.compile(flex_attention)``) on the whole contiguous copy with a ``create_block_mask``
  sliding-window block mask, which skips the 128-token KV blocks outside every window.
* fp8 KV cases (names with "fp8"): ours reads ``float8_e4m3fn`` caches (written by ``write_kv`` with the per-tensor
  scales ``FP8_SCALES``, powers of two so that the dequantized values are exact in bf16) with ``k_scale``/``v_scale``;
  q and the output stay bf16. SDPA and FlexAttention have no fp8 KV input: they read bf16 copies of the dequantized
  K/V, twice the bytes. The window's K/V bytes, the 1 GB threshold and the bytes target count fp8 bytes (one per
  element).

Bytes: the window's K/V bytes are the keys some query sees x KV heads x 128 x 2 bytes x 2 (K and V). The bytes our
kernel moves are given by a model of its loads (the K/V rows, the block-table entries, the split-KV partials; q and
the output listed apart): ``sw_decode_bytes`` / ``sw_prefill_bytes``. ``--cpu-smoke`` checks the model against the
bytes the kernels load in the Triton interpreter (``kernels.bench.loads``), where masked lanes load nothing, as on the
GPU. Targets, for cases of at least 1 GB of window K/V: our time at least 0.97x of the fastest alternative, and the
K/V bytes moved within 5% of the window's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

from kernels.attention import decode_plan, paged_decode_attention, paged_prefill_attention, prefill_hopper, prefill_plan
from kernels.attention.common import interpreting, num_sms
from kernels.bench.cases import (
    sliding_window_decode_cases,
    sliding_window_fp8_decode_cases,
    sliding_window_fp8_prefill_cases,
    sliding_window_prefill_cases,
)
from kernels.bench.run import BLOCK, GB, HEAD, MAX_BYTES, RUN
from kernels.bench.sliding_window_baselines import time_flex, time_sdpa
from kernels.bench.sliding_window_bytes import count_loads, sw_decode_bytes, sw_prefill_bytes
from kernels.bench.sliding_window_report import evaluate_targets, write_markdown
from kernels.bench.timing import Budget, bench_graph, bench_graph_or_eager, copy_ceiling, env_info
from kernels.cache_ops import FP8_DTYPE, write_kv

# (k_scale, v_scale) of the fp8 cases: N(0, 1) values / 2**-5 stay below 448 (e4m3's largest) up to 14 standard
# deviations, and powers of two keep the dequantized bf16 copies the baselines read exact
FP8_SCALES = (2.0**-5, 2.0**-5)


def _sync():
    if not RUN.smoke:
        torch.cuda.synchronize()


def _free():
    if not RUN.smoke:
        torch.cuda.empty_cache()


def _paged_cache(lens, hkv, fp8=False):
    """Random K/V caches on a scattered table (one NaN block at the end, for the freed entries), the table, and
    the contiguous copies ``[B, Hkv, Lmax, D]`` gathered through it. With ``fp8`` the caches returned are
    ``float8_e4m3fn``, written by ``write_kv`` with ``FP8_SCALES``, and the copies hold their dequantized values."""
    nblk = [max(1, math.ceil(n / BLOCK)) for n in lens]
    total = sum(nblk) + 1
    k_cache = torch.randn((total, BLOCK, hkv, HEAD), dtype=RUN.dtype, device=RUN.dev)
    v_cache = torch.randn_like(k_cache)
    nan_block = total - 1
    k_cache[nan_block] = float("nan")
    v_cache[nan_block] = float("nan")
    if fp8:
        k8 = torch.empty(k_cache.shape, dtype=FP8_DTYPE, device=RUN.dev)
        v8 = torch.empty_like(k8)
        slots = torch.arange(total * BLOCK, device=RUN.dev)
        ks, vs = FP8_SCALES
        write_kv(k_cache.view(-1, hkv, HEAD), v_cache.view(-1, hkv, HEAD), k8, v8, slots, k_scale=ks, v_scale=vs)
        del slots
        k_cache.copy_(k8).mul_(ks)  # the values ours reads, exact in bf16 (power-of-two scales): the copies' source
        v_cache.copy_(v8).mul_(vs)
    perm = torch.randperm(total - 1, device=RUN.dev).to(torch.int32)
    bt = torch.full((len(lens), max(nblk)), nan_block, dtype=torch.int32, device=RUN.dev)
    pos = 0
    for s, n in enumerate(nblk):
        bt[s, :n] = perm[pos : pos + n]
        pos += n
    lmax = max(nblk) * BLOCK
    kc = k_cache[bt.long()].view(len(lens), lmax, hkv, HEAD).transpose(1, 2).contiguous()
    vc = v_cache[bt.long()].view(len(lens), lmax, hkv, HEAD).transpose(1, 2).contiguous()
    if fp8:
        return k8, v8, bt, nan_block, kc, vc
    return k_cache, v_cache, bt, nan_block, kc, vc


def _fp8_kwargs(fp8: bool) -> dict:
    """The scale arguments of our kernels for the fp8 cases (none otherwise)."""
    return dict(zip(("k_scale", "v_scale"), FP8_SCALES)) if fp8 else {}


def _freed(bt, nan_block, first_pos):
    """The table with the entries of blocks wholly before ``first_pos[s]`` pointing at the NaN block."""
    bt_win = bt.clone()
    for s, p in enumerate(first_pos):
        bt_win[s, : max(0, p) // BLOCK] = nan_block
    return bt_win


def _finish(rec, times, kv_moved, window_kv, ceiling_tb_s, primary):
    """Speeds, bandwidths and the fastest alternative of a case record."""
    rec["ms"] = times
    rec["window_tb_s"] = {k: window_kv / (t * 1e-3) / 1e12 for k, t in times.items()}
    rec["frac_of_copy"] = {k: v / ceiling_tb_s for k, v in rec["window_tb_s"].items()}
    alts = {k: t for k, t in times.items() if not k.startswith("ours")}
    if alts:
        best = min(alts, key=alts.get)
        rec["fastest_alternative"] = best
        rec["ours_speed_vs_fastest_alternative"] = alts[best] / times[primary]
    sd = {k: t for k, t in alts.items() if k.startswith("sdpa_")}
    if sd:
        rec["fastest_sdpa"] = min(sd, key=sd.get)
        rec["ours_speed_vs_fastest_sdpa"] = sd[rec["fastest_sdpa"]] / times[primary]
    if "flex" in alts:
        rec["ours_speed_vs_flex"] = alts["flex"] / times[primary]
    rec["kv_bytes_moved_vs_window"] = kv_moved / window_kv if window_kv else float("nan")


def _diffs(rec, ours, outs, shape_fn):
    """Largest difference of our output from each alternative's (reshaped by ``shape_fn``; NaN rows of an
    alternative, e.g. SDPA's for a sequence of length 0, left out), and whether ours has a NaN."""
    o = ours.float()
    rec["ours_nan"] = bool(torch.isnan(o).any().item())
    for name, r in outs.items():
        r = shape_fn(r).float()
        d = torch.where(torch.isnan(r), torch.zeros_like(r), (o - r).abs())
        rec.setdefault("max_abs_diff", {})[name] = d.max().item()


def measure_sw_decode(name, batch, hq, hkv, lens, window, ceiling_tb_s, with_flex=True, fp8=False) -> dict:
    """One decode case (``fp8``: ours on float8_e4m3fn caches, the baselines on bf16 copies of their values)."""
    esize = torch.tensor([], dtype=RUN.dtype).element_size()
    kv_esize = 1 if fp8 else esize
    lmax = max(math.ceil(n / BLOCK) for n in lens) * BLOCK
    full_bytes = batch * lmax * hkv * HEAD * esize * 2
    rec = {"case": name, "batch": batch, "q_heads": hq, "kv_heads": hkv, "window": window, "max_len": max(lens)}
    rec["mean_len"] = sum(lens) / len(lens)
    rec["kv_dtype"] = "float8_e4m3fn" if fp8 else str(RUN.dtype).replace("torch.", "")
    scales = _fp8_kwargs(fp8)
    rec.update(scales)
    if 2 * full_bytes > MAX_BYTES:  # the cache and its contiguous copy
        rec["skipped"] = f"cache and copy {2 * full_bytes / GB:.1f} GB > {MAX_BYTES / GB:.0f} GB"
        return rec
    torch.manual_seed(0)
    k_cache, v_cache, bt, nan_block, kc, vc = _paged_cache(lens, hkv, fp8)
    bt_win = _freed(bt, nan_block, [n - window for n in lens])
    q = torch.randn((batch, hq, HEAD), dtype=RUN.dtype, device=RUN.dev)
    sl = torch.tensor(lens, dtype=torch.int32, device=RUN.dev)
    scale = HEAD**-0.5
    max_len = bt.shape[1] * BLOCK
    out = torch.empty_like(q)

    dcfg = decode_plan.decode_config(HEAD, hq // hkv, RUN.dtype, BLOCK, batch * hkv, num_sms(q.device))
    splits, part, _, _ = decode_plan.split_plan(
        batch, hkv, min(max_len, window), dcfg["block_n"], num_sms(q.device), None, None
    )
    rec["splits"], rec["partition"] = splits, part
    model = sw_decode_bytes(lens, window, hq, hkv, esize, splits, kv_esize)
    rec["bytes_model"] = model
    rec["window_kv_gb"] = model["window_kv"] / GB

    def ours(table=bt_win, **kw):
        kw.setdefault("sliding_window", window)
        return lambda: paged_decode_attention(
            q, k_cache, v_cache, table, sl, scale, max_seq_len=max_len, out=out, **scales, **kw
        )

    times, outs = {}, {}
    times["ours"] = bench_graph(ours())
    if batch >= 16:
        times["ours_balanced"] = bench_graph(ours(config={"balanced": True}))
    times["ours_full_attention"] = bench_graph(ours(bt, sliding_window=None))
    out.fill_(float("nan"))
    ours_out = ours()().clone()
    if batch >= 16:
        out.fill_(float("nan"))
        rec["balanced_max_abs_diff_vs_default"] = (
            (ours(config={"balanced": True})().float() - ours_out.float()).abs().max().item()
        )
    if RUN.smoke:
        rec["bytes_counted_interpreter"] = count_loads(ours(), k_cache, v_cache, bt_win)
        from kernels.reference import ref_paged_decode

        ref = ref_paged_decode(q, k_cache, v_cache, bt_win, sl, scale, sliding_window=window, **scales)
        rec["ours_max_abs_err_vs_ref"] = (ours_out.float() - ref.float()).abs().max().item()

    gqa = hq != hkv
    q4 = q.view(batch, hq, 1, HEAD)
    pos = torch.arange(lmax, device=RUN.dev)
    lo = (sl.long() - window).clamp_min(0)
    mask = ((pos[None, :] < sl[:, None].long()) & (pos[None, :] >= lo[:, None]))[:, None, None, :]
    time_sdpa(rec, times, "masked", q4, kc, vc, mask, gqa, outs)
    # SDPA's best case: a contiguous copy of the windows alone (the last `window` keys, fewer for short sequences)
    wpad = min(window, max(lens))
    idx = (lo[:, None] + torch.arange(wpad, device=RUN.dev)[None, :]).clamp_max(lmax - 1)
    kw_ = kc.gather(2, idx[:, None, :, None].expand(batch, hkv, wpad, HEAD)).contiguous()
    vw_ = vc.gather(2, idx[:, None, :, None].expand(batch, hkv, wpad, HEAD)).contiguous()
    wmask = None
    if any(n < window for n in lens):
        wmask = ((lo[:, None] + torch.arange(wpad, device=RUN.dev)[None, :]) < sl[:, None].long())[:, None, None, :]
    time_sdpa(rec, times, "window", q4, kw_, vw_, wmask, gqa, outs)
    del kw_, vw_
    if with_flex:
        sl_l = sl.long()

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx < sl_l[b]) & (kv_idx >= sl_l[b] - window)

        time_flex(rec, times, outs, q4, kc, vc, mask_mod, batch, 1, lmax, gqa, scale)
    _diffs(rec, ours_out, outs, lambda r: r.reshape(batch, hq, HEAD))
    times["ours_repeat"] = bench_graph(ours())
    rec["repeat_spread"] = abs(times["ours_repeat"] / times["ours"] - 1.0)
    rec["window_saving_vs_full_attention"] = times["ours_full_attention"] / times["ours"]
    _finish(rec, times, model["kv_moved"], model["window_kv"], ceiling_tb_s, "ours")
    return rec


def measure_sw_prefill(name, batch, hq, hkv, ctx, new, window, ceiling_tb_s, with_flex=True, fp8=False) -> dict:
    """One prefill case (``fp8``: ours on float8_e4m3fn caches, with bf16 new K/V on the new-K/V path; the baselines
    on bf16 copies of the cache's values)."""
    esize = torch.tensor([], dtype=RUN.dtype).element_size()
    kv_esize = 1 if fp8 else esize
    total_len = ctx + new
    full_bytes = batch * math.ceil(total_len / BLOCK) * BLOCK * hkv * HEAD * esize * 2
    rec = {"case": name, "batch": batch, "q_heads": hq, "kv_heads": hkv, "context": ctx, "new": new, "window": window}
    rec["kv_dtype"] = "float8_e4m3fn" if fp8 else str(RUN.dtype).replace("torch.", "")
    scales = _fp8_kwargs(fp8)
    rec.update(scales)
    if 2 * full_bytes > MAX_BYTES:
        rec["skipped"] = f"cache and copy {2 * full_bytes / GB:.1f} GB > {MAX_BYTES / GB:.0f} GB"
        return rec
    torch.manual_seed(1)
    k_cache, v_cache, bt, nan_block, kc, vc = _paged_cache([total_len] * batch, hkv, fp8)
    kc, vc = kc[:, :, :total_len], vc[:, :, :total_len]
    lo = max(0, ctx - window + 1)  # the first new token's window starts here
    bt_win = _freed(bt, nan_block, [lo] * batch)
    q = torch.randn((batch * new, hq, HEAD), dtype=RUN.dtype, device=RUN.dev)
    cu = torch.arange(0, batch + 1, dtype=torch.int32, device=RUN.dev) * new
    ctx_t = torch.full((batch,), ctx, dtype=torch.int32, device=RUN.dev)
    scale = HEAD**-0.5
    out = torch.empty_like(q)
    # FLOPs needed: the query at position p sees min(p + 1, window) keys; QK^T and PV are 2 * D each
    keys_seen = batch * sum(min(p + 1, window) for p in range(ctx, total_len))
    rec["flops"] = flops = 4 * HEAD * hq * keys_seen
    block_m = prefill_plan.prefill_config(max(16, HEAD), RUN.dtype, new)["block_m"]
    model = sw_prefill_bytes(batch, ctx, new, window, hq, hkv, esize, block_m, kv_esize)
    rec["bytes_model"] = model
    rec["window_kv_gb"] = model["window_kv"] / GB

    def ours(table=bt_win, **kw):
        kw.setdefault("sliding_window", window)
        return lambda: paged_prefill_attention(
            q, k_cache, v_cache, table, cu, ctx_t, scale, max_query_len=new, out=out, **scales, **kw
        )

    kn = kc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, HEAD).contiguous()
    vn = vc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, HEAD).contiguous()
    times, outs = {}, {}
    times["ours"] = bench_graph_or_eager(ours(), rec, "ours")
    times["ours_newkv"] = bench_graph_or_eager(ours(new_key=kn, new_value=vn, max_context_len=ctx), rec, "ours_newkv")
    out.fill_(float("nan"))
    o_newkv = ours(new_key=kn, new_value=vn, max_context_len=ctx)().clone()
    out.fill_(float("nan"))
    ours_out = ours()().clone()
    rec["newkv_max_abs_diff_vs_paged"] = (o_newkv.float() - ours_out.float()).abs().max().item()
    rec["newkv_nan"] = bool(torch.isnan(o_newkv).any().item())
    del kn, vn
    if fp8 and not RUN.smoke and prefill_hopper.supported_paged(q, k_cache, v_cache, scale)[0]:
        # ours is the Gluon kernel's fp8 form on Hopper (dispatch.WGMMA_FP8_PREFILL_DEFAULT); the Triton paged
        # kernel beside it on the same fp8 cache, with its difference from ours
        times["ours_triton"] = bench_graph_or_eager(ours(config={"wgmma": False}), rec, "ours_triton")
        out.fill_(float("nan"))
        o_triton = ours(config={"wgmma": False})().clone()
        rec["triton_max_abs_diff_vs_paged"] = (o_triton.float() - ours_out.float()).abs().max().item()
        rec["triton_nan"] = bool(torch.isnan(o_triton).any().item())
        del o_triton
    if RUN.smoke:
        rec["bytes_counted_interpreter"] = count_loads(ours(), k_cache, v_cache, bt_win)
        from kernels.reference import ref_paged_prefill

        ref = ref_paged_prefill(q, k_cache, v_cache, bt_win, cu, ctx_t, scale, sliding_window=window, **scales)
        rec["ours_max_abs_err_vs_ref"] = (ours_out.float() - ref.float()).abs().max().item()

    gqa = hq != hkv
    q4 = q.view(batch, new, hq, HEAD).transpose(1, 2).contiguous()
    qpos = torch.arange(ctx, total_len, device=RUN.dev)
    kpos = torch.arange(total_len, device=RUN.dev)
    mask = (kpos[None, :] <= qpos[:, None]) & (kpos[None, :] > qpos[:, None] - window)
    time_sdpa(rec, times, "masked", q4, kc, vc, mask, gqa, outs)
    # SDPA's best case: the keys from the first new token's window on only
    kw_, vw_ = kc[:, :, lo:].contiguous(), vc[:, :, lo:].contiguous()
    time_sdpa(rec, times, "window", q4, kw_, vw_, mask[:, lo:].contiguous(), gqa, outs)
    del kw_, vw_
    if with_flex:

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx + ctx) & (kv_idx > q_idx + ctx - window)

        time_flex(rec, times, outs, q4, kc, vc, mask_mod, None, new, total_len, gqa, scale)
    _diffs(rec, ours_out, outs, lambda r: r.transpose(1, 2).reshape(batch * new, hq, HEAD))
    rec["tflop_s"] = {k: flops / (t * 1e-3) / 1e12 for k, t in times.items()}
    _finish(rec, times, model["kv_moved"], model["window_kv"], ceiling_tb_s, "ours")
    return rec


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog="python -m kernels.bench sliding-window",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=900.0, help="stop starting new cases after this long")
    ap.add_argument("--only", default="", help="comma list of sections: decode,prefill")
    ap.add_argument("--quick", action="store_true", help="a few cases only")
    ap.add_argument("--case", default="", help="only the cases whose name holds this text (e.g. 'fp8')")
    ap.add_argument("--no-flex", action="store_true", help="leave FlexAttention out (one compile per shape)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (needs TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    sections = set(filter(None, args.only.split(","))) or {"decode", "prefill"}
    if sections - {"decode", "prefill"}:
        ap.error(f"unknown section(s) {sorted(sections - {'decode', 'prefill'})}")
    if args.cpu_smoke:
        if not interpreting():
            raise SystemExit("--cpu-smoke needs TRITON_INTERPRET=1 set before the command starts")
        RUN.use_cpu_smoke()
    elif not torch.cuda.is_available():
        raise SystemExit("the sliding-window benchmark needs a CUDA GPU; '--cpu-smoke' checks it on tiny CPU shapes")
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget_s)
    result = {"env": env_info(argv), "decode": [], "prefill": []}
    result["env"]["command"] = "python -m kernels.bench sliding-window " + " ".join(argv)
    json_path = os.path.join(args.out, "sliding_window.json")
    md_path = os.path.join(args.out, "sliding_window.md")

    def save():
        result["targets"] = evaluate_targets(result)
        result["elapsed_s"] = time.time() - budget.t0
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=1)
        write_markdown(result, md_path)

    result["copy_ceiling"] = copy_ceiling()
    ceil = result["copy_ceiling"]["tb_s"]
    print(f"copy ceiling {ceil:.3f} TB/s", flush=True)
    jobs = []
    if "decode" in sections:
        jobs += [("decode", c, False) for c in sliding_window_decode_cases(args.quick)]
        jobs += [("decode", c, True) for c in sliding_window_fp8_decode_cases(args.quick)]
    if "prefill" in sections:
        jobs += [("prefill", c, False) for c in sliding_window_prefill_cases(args.quick)]
        jobs += [("prefill", c, True) for c in sliding_window_fp8_prefill_cases(args.quick)]
    jobs = [job for job in jobs if args.case in job[1][0]]
    if not jobs:
        ap.error(f"no case of the chosen sections has {args.case!r} in its name")
    for section, case, fp8 in jobs:
        name = case[0]
        if budget.left() < 30:
            result[section].append({"case": name, "skipped": "budget"})
            continue
        t0 = time.time()
        try:
            if section == "decode":
                r = measure_sw_decode(*case, ceil, with_flex=not args.no_flex, fp8=fp8)
            else:
                r = measure_sw_prefill(*case, ceil, with_flex=not args.no_flex, fp8=fp8)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            r = {"case": name, "error": f"{type(e).__name__}: {e}"[:300]}
            _free()
        _free()  # the case's tensors went with its function
        result[section].append(r)
        if "ms" in r:
            print(
                f"{name:44s} window {r['window_kv_gb']:6.3f} GB ours {r['ms']['ours']:.4f} ms "
                f"({100 * r['frac_of_copy']['ours']:.1f}% copy) best alt {r.get('fastest_alternative')} "
                f"x{r.get('ours_speed_vs_fastest_alternative', float('nan')):.3f} "
                f"bytes x{r['kv_bytes_moved_vs_window']:.4f}"
                f" nan={r['ours_nan']} [{time.time() - t0:.1f}s]",
                flush=True,
            )
        else:
            print(f"{name:44s} {r.get('skipped') or r.get('error')}", flush=True)
        save()
    save()
    print("\n" + open(md_path).read())
    return result


if __name__ == "__main__":
    main()
