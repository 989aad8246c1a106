"""Decode cases: our kernel on a scattered and an in-order table, its variants, SDPA and FlexAttention."""

from __future__ import annotations

import math
import traceback

import torch

from kernels.attention import decode, decode_plan
from kernels.attention.common import num_sms
from kernels.bench.flex import measure_flex
from kernels.bench.run import BLOCK, GB, HEAD, MAX_BYTES, RUN
from kernels.bench.sdpa import run_sdpa, sdpa_backends
from kernels.bench.timing import bench, bench_graph, cpu_us, frees_device_memory


def build_decode_case(batch, hq, hkv, lens, gen_seed=0, need_contig=True):
    """Paged cache (scattered blocks), in-order cache table, and contiguous copies for SDPA."""
    torch.manual_seed(gen_seed)
    nblk = [math.ceil(n / BLOCK) for n in lens]
    width = max(nblk)
    total = sum(nblk)
    k_cache = torch.randn((total, BLOCK, hkv, HEAD), dtype=RUN.dtype, device=RUN.dev)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(total, device=RUN.dev).to(torch.int32)
    inorder = torch.arange(total, device=RUN.dev, dtype=torch.int32)
    bt = torch.zeros((batch, width), dtype=torch.int32, device=RUN.dev)
    bt_in = torch.zeros_like(bt)
    pos = 0
    for s, n in enumerate(nblk):
        bt[s, :n] = perm[pos : pos + n]
        bt_in[s, :n] = inorder[pos : pos + n]
        pos += n
    q = torch.randn((batch, hq, HEAD), dtype=RUN.dtype, device=RUN.dev)
    sl = torch.tensor(lens, dtype=torch.int32, device=RUN.dev)
    case = dict(k_cache=k_cache, v_cache=v_cache, bt=bt, bt_in=bt_in, q=q, sl=sl, max_len=width * BLOCK)
    if need_contig:
        lmax = width * BLOCK
        # gather through the scattered table: [B, width, BLOCK, hkv, D] -> [B, hkv, Lmax, D]
        kc = k_cache[bt.long()].view(batch, lmax, hkv, HEAD).transpose(1, 2).contiguous()
        vc = v_cache[bt.long()].view(batch, lmax, hkv, HEAD).transpose(1, 2).contiguous()
        case.update(k_contig=kc, v_contig=vc, lmax=lmax)
        if any(n != lmax for n in lens):
            case["mask"] = (torch.arange(lmax, device=RUN.dev)[None, :] < sl[:, None].long())[:, None, None, :]
    return case


def decode_bytes(lens, hkv):
    """KV bytes a decode step must read: every token's K and V for every KV head."""
    return sum(lens) * hkv * HEAD * 2 * 2


@frees_device_memory
def measure_decode(
    name, batch, hq, hkv, lens, ceiling_tb_s, budget, with_sdpa=True, extra_configs=None, with_flex=False
):
    kv_bytes = decode_bytes(lens, hkv)
    lmax = math.ceil(max(lens) / BLOCK) * BLOCK
    padded = batch * lmax * hkv * HEAD * 2 * 2
    rec = {
        "case": name,
        "batch": batch,
        "q_heads": hq,
        "kv_heads": hkv,
        "head_size": HEAD,
        "block_size": BLOCK,
        "mean_len": sum(lens) / len(lens),
        "max_len": max(lens),
        "kv_bytes": kv_bytes,
        "kv_gb": kv_bytes / GB,
    }
    if kv_bytes > MAX_BYTES:
        rec["skipped"] = f"KV {kv_bytes / GB:.1f} GB > {MAX_BYTES / GB:.0f} GB"
        return rec
    sdpa_ok = with_sdpa and padded <= MAX_BYTES
    if with_sdpa and not sdpa_ok:
        rec["sdpa_skipped"] = f"padded contiguous copy {padded / GB:.1f} GB > {MAX_BYTES / GB:.0f} GB"
    c = build_decode_case(batch, hq, hkv, lens, need_contig=sdpa_ok)
    scale = HEAD**-0.5
    q, kc, vc, bt, bt_in, sl = c["q"], c["k_cache"], c["v_cache"], c["bt"], c["bt_in"], c["sl"]
    max_len = c["max_len"]
    dcfg = decode_plan.decode_config(HEAD, hq // hkv, RUN.dtype, BLOCK, batch * hkv, num_sms(q.device))
    rec["default_config"] = {k: dcfg[k] for k in ("block_n", "num_stages", "fuse_always")}
    splits, part = decode_plan.choose_partition(batch, hkv, max_len, dcfg["block_n"], num_sms(q.device), None)
    rec["auto_splits"], rec["auto_partition"] = splits, part
    plan = decode_plan.split_plan(batch, hkv, max_len, dcfg["block_n"], num_sms(q.device), None, None)
    # with the device-side uniform test the grid has `splits` partitions, but near-uniform lengths use the hint's
    rec["auto_uniform_partition"] = plan[3] if plan[2] else None
    hint_splits, hint_part = decode_plan.choose_partition(
        batch, hkv, max_len, dcfg["block_n"], num_sms(q.device), None, min(lens)
    )
    rec["hint_splits"], rec["hint_partition"] = hint_splits, hint_part
    out = torch.empty_like(q)

    def ours(table=bt, **kw):
        return lambda: decode.paged_decode_attention(q, kc, vc, table, sl, scale, max_seq_len=max_len, out=out, **kw)

    # Primary times: do_bench medians of CUDA-graph replays, for our kernel and for SDPA alike.
    # Eager launches are also timed: below ~100 us both are bound by host launch overhead here.
    times, eager = {}, {}
    times["ours_scattered"] = bench_graph(ours())
    times["ours_inorder"] = bench_graph(ours(bt_in))
    if splits > 1:  # A/B in the same process: the split-KV reduce fused (forced) and in a second launch (forced)
        times["ours_two_kernel"] = bench_graph(ours(fused_reduce=False))
        times["ours_fused"] = bench_graph(ours(fused_reduce=True))
    rec["default_fused"] = splits > 1 and (dcfg["fuse_always"] or decode_plan.auto_fused(batch, hkv, splits, q.device))
    # the host hint min_seq_len changes the split choice, or marks the batch as mixed (the balanced path)
    rec["hint_balanced"] = decode_plan.balanced_default(batch, hkv, max_len, min(lens), None)
    if (hint_splits, hint_part) != (splits, part) or rec["hint_balanced"]:
        times["ours_hint"] = bench_graph(ours(min_seq_len=min(lens)))
    if batch >= 16:  # the balanced (stream-K) path forced on
        times["ours_balanced"] = bench_graph(ours(config={"balanced": True}))
    eager["ours_scattered"] = bench(ours())
    rec["cpu_us_per_call"] = {"ours": cpu_us(ours())}
    res = {}
    if sdpa_ok:
        q4 = q.view(batch, hq, 1, HEAD)
        gqa = hq != hkv
        mask = c.get("mask")
        for bname, backend in sdpa_backends():
            try:
                res[bname] = run_sdpa(backend, q4, c["k_contig"], c["v_contig"], mask, gqa=gqa)

                def fn(b=backend):
                    return run_sdpa(b, q4, c["k_contig"], c["v_contig"], mask, gqa=gqa)

                eager[f"sdpa_{bname}"] = bench(fn)
                rec["cpu_us_per_call"][f"sdpa_{bname}"] = cpu_us(fn)
                try:
                    times[f"sdpa_{bname}"] = bench_graph(fn)
                except Exception as e:  # noqa: BLE001
                    rec[f"sdpa_{bname}_graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    times[f"sdpa_{bname}"] = eager[f"sdpa_{bname}"]
            except Exception as e:  # noqa: BLE001
                rec[f"sdpa_{bname}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    # correctness against SDPA on the same data; the output is poisoned first so unwritten rows show as NaN
    out.fill_(float("nan"))
    ours_out = ours()().float()
    if res:
        ref = next(iter(res.values())).float().view(batch, hq, HEAD)
        rec["max_abs_diff_vs_sdpa"] = (ours_out - ref).abs().max().item()
    rec["ours_nan"] = bool(torch.isnan(ours_out).any().item())
    for label, kw in (
        ("ours_two_kernel", dict(fused_reduce=False)),
        ("ours_fused", dict(fused_reduce=True)),
        ("ours_hint", dict(min_seq_len=min(lens))),
        ("ours_balanced", dict(config={"balanced": True})),
    ):
        if label in times:
            out.fill_(float("nan"))
            o2 = ours(**kw)().float()
            rec.setdefault("variant_max_abs_diff_vs_default", {})[label] = (o2 - ours_out).abs().max().item()
            rec["ours_nan"] = rec["ours_nan"] or bool(torch.isnan(o2).any().item())
    if with_flex:
        # FlexAttention over the same paged cache; both outputs checked against kernels.reference
        from kernels.reference import ref_paged_decode

        ref_out = ref_paged_decode(q.float(), kc, vc, bt, sl, scale).float()
        rec["ours_max_abs_err_vs_ref"] = (ours_out - ref_out).abs().max().item()
        try:
            measure_flex(c, rec, times, eager, lens, hq, hkv, scale, ref_out)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rec["flex_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            if not RUN.smoke:
                torch.cuda.synchronize()
        del ref_out
    times["ours_scattered_repeat"] = bench_graph(ours())
    if extra_configs:
        sweep = {}
        for label, kw in extra_configs:
            if budget.left() < 30:
                sweep[label] = "skipped: budget"
                continue
            try:
                sweep[label] = bench_graph(ours(**kw))
            except Exception as e:  # noqa: BLE001
                sweep[label] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rec["sweep_ms"] = sweep
    rec["eager_ms"] = eager
    sde = {k: t for k, t in eager.items() if k.startswith("sdpa_")}
    if sde:
        rec["eager_ours_speed_vs_fastest_sdpa"] = min(sde.values()) / eager["ours_scattered"]
    rec["ms"] = times
    rec["tb_s"] = {k: kv_bytes / (t * 1e-3) / 1e12 for k, t in times.items()}
    rec["frac_of_copy"] = {k: v / ceiling_tb_s for k, v in rec["tb_s"].items()}
    sd = {k: t for k, t in times.items() if k.startswith("sdpa_")}
    if sd:
        best = min(sd, key=sd.get)
        rec["fastest_sdpa"] = best
        rec["ours_speed_vs_fastest_sdpa"] = sd[best] / times["ours_scattered"]
    if "flex_paged" in times:
        rec["ours_speed_vs_flex"] = times["flex_paged"] / times["ours_scattered"]
    for label in ("ours_two_kernel", "ours_fused", "ours_hint", "ours_balanced"):
        if label in times and sd:
            rec[f"{label}_speed_vs_fastest_sdpa"] = sd[best] / times[label]
    if "ours_two_kernel" in times:
        rec["fused_speedup_vs_two_kernel"] = times["ours_two_kernel"] / times["ours_fused"]
    rec["paging_overhead"] = times["ours_scattered"] / times["ours_inorder"] - 1.0
    rec["repeat_spread"] = abs(times["ours_scattered_repeat"] / times["ours_scattered"] - 1.0)
    return rec


def decode_sweep_configs(hq, hkv, batch, max_len):
    """(label, keyword arguments) of the alternative configs and split counts ``--sweep`` times."""
    cfgs = []
    for bn, nw, ns in [(32, 4, 3), (128, 4, 3), (64, 4, 2), (64, 8, 3)]:
        cfgs.append((f"bn{bn}_w{nw}_s{ns}", {"config": dict(block_n=bn, num_warps=nw, num_stages=ns)}))
    for sp in (1, 2, 3, 4, 6, 8, 16, 32):
        if sp * 128 <= max_len:
            if sp == 1:
                cfgs.append(("splits1", {"num_splits": 1}))
            else:
                cfgs.append((f"splits{sp}_fused", {"num_splits": sp, "fused_reduce": True}))
                cfgs.append((f"splits{sp}_two_kernel", {"num_splits": sp, "fused_reduce": False}))
    return cfgs
