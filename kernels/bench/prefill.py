"""Prefill cases (with and without cached context, chunked): both of our paths, the Triton kernels beside the
Gluon ones, and SDPA with a causal (lower-right with context) mask."""

from __future__ import annotations

import math
import traceback

import torch

from kernels.attention import dispatch, prefill_hopper
from kernels.bench.run import BLOCK, HEAD, RUN
from kernels.bench.sdpa import run_sdpa, sdpa_backends
from kernels.bench.timing import bench_graph, bench_graph_or_eager, frees_device_memory


@frees_device_memory
def measure_prefill(name, batch, hq, hkv, ctx, new, budget, sweep=False):
    torch.manual_seed(1)
    total_len = ctx + new
    nblk = math.ceil(total_len / BLOCK)
    nb = batch * nblk
    k_cache = torch.randn((nb, BLOCK, hkv, HEAD), dtype=RUN.dtype, device=RUN.dev)
    v_cache = torch.randn_like(k_cache)
    bt = torch.randperm(nb, device=RUN.dev).to(torch.int32).view(batch, nblk)
    q = torch.randn((batch * new, hq, HEAD), dtype=RUN.dtype, device=RUN.dev)
    cu = torch.arange(0, batch + 1, dtype=torch.int32, device=RUN.dev) * new
    ctx_t = torch.full((batch,), ctx, dtype=torch.int32, device=RUN.dev)
    scale = HEAD**-0.5
    out = torch.empty_like(q)
    # FLOPs actually needed: query at position p sees p + 1 keys; QK^T and PV are 2 * D each
    keys_seen = batch * (new * ctx + new * (new + 1) // 2)
    flops = 4 * HEAD * hq * keys_seen
    rec = {"case": name, "batch": batch, "q_heads": hq, "kv_heads": hkv, "context": ctx, "new": new, "flops": flops}

    def ours(**kw):
        return lambda: dispatch.paged_prefill_attention(
            q, k_cache, v_cache, bt, cu, ctx_t, scale, max_query_len=new, out=out, **kw
        )

    times = {"ours_paged": bench_graph_or_eager(ours(), rec, "ours_paged")}
    # the paged column runs the Gluon kernel's paged form where it can; the Triton paged kernel beside it
    ok, why = prefill_hopper.supported_paged(q, k_cache, v_cache, scale)
    rec["paged_kernel"] = "gluon (kernels.attention.prefill_hopper, paged)" if ok else f"triton ({why})"
    try:
        times["ours_paged_triton"] = bench_graph_or_eager(ours(config={"wgmma": False}), rec, "ours_paged_triton")
    except Exception as e:  # noqa: BLE001
        rec["ours_paged_triton_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    # contiguous copies for SDPA: [B, H, L, D]
    kc = k_cache[bt.long()].view(batch, nblk * BLOCK, hkv, HEAD)[:, :total_len].transpose(1, 2).contiguous()
    vc = v_cache[bt.long()].view(batch, nblk * BLOCK, hkv, HEAD)[:, :total_len].transpose(1, 2).contiguous()
    # the new tokens' K/V as a serving step has them just computed: [B * new, Hkv, D], rows aligned with q
    kn = kc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, HEAD).contiguous()
    vn = vc[:, :, ctx:].transpose(1, 2).reshape(batch * new, hkv, HEAD).contiguous()

    def ours_newkv(**kw):
        return lambda: dispatch.paged_prefill_attention(
            q,
            k_cache,
            v_cache,
            bt,
            cu,
            ctx_t,
            scale,
            max_query_len=new,
            out=out,
            new_key=kn,
            new_value=vn,
            max_context_len=ctx,
            **kw,
        )

    try:
        times["ours_newkv"] = bench_graph_or_eager(ours_newkv(), rec, "ours_newkv")
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rec["ours_newkv_error"] = (
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        )
    if ctx == 0:
        # pure prefill: the default runs the Gluon warp-group-MMA kernel where it can; the Triton kernel beside it
        ok, why = prefill_hopper.supported(q, kn, vn, scale)
        rec["newkv_kernel"] = "gluon (kernels.attention.prefill_hopper)" if ok else f"triton ({why})"
        try:
            times["ours_newkv_triton"] = bench_graph_or_eager(
                ours_newkv(config={"wgmma": False}), rec, "ours_newkv_triton"
            )
        except Exception as e:  # noqa: BLE001
            rec["ours_newkv_triton_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    q4 = q.view(batch, new, hq, HEAD).transpose(1, 2).contiguous()
    gqa = hq != hkv
    if ctx == 0:
        mask, causal = None, True
    else:
        from torch.nn.attention.bias import causal_lower_right

        mask, causal = causal_lower_right(new, total_len), False
    ref = None
    for bname, backend in sdpa_backends():
        try:
            r = run_sdpa(backend, q4, kc, vc, mask, is_causal=causal, gqa=gqa)
            ref = r if ref is None else ref
            times[f"sdpa_{bname}"] = bench_graph_or_eager(
                lambda b=backend: run_sdpa(b, q4, kc, vc, mask, is_causal=causal, gqa=gqa), rec, f"sdpa_{bname}"
            )
        except Exception as e:  # noqa: BLE001
            rec[f"sdpa_{bname}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    o = ours()().float()
    rec["ours_nan"] = bool(torch.isnan(o).any().item())
    if ref is not None:
        rec["max_abs_diff_vs_sdpa"] = (o.view(batch, new, hq, HEAD).transpose(1, 2) - ref.float()).abs().max().item()
    if "ours_newkv" in times:
        o = ours_newkv()().float()
        rec["ours_newkv_nan"] = bool(torch.isnan(o).any().item())
        if ref is not None:
            rec["newkv_max_abs_diff_vs_sdpa"] = (
                (o.view(batch, new, hq, HEAD).transpose(1, 2) - ref.float()).abs().max().item()
            )
    if sweep:
        sw = {}
        # the contiguous-new-K/V path: tile shapes, TMA or pointer loads, warp specialisation, tile order
        for bm, bn, nw, ns, tma, ws, rev in [
            (64, 64, 4, 3, True, False, False),
            (64, 64, 4, 4, True, False, True),
            (64, 64, 4, 2, True, False, True),
            (128, 64, 8, 3, True, True, True),
            (64, 64, 4, 3, True, True, True),
            (128, 128, 8, 3, True, True, True),
            (128, 128, 8, 3, True, False, True),
            (64, 32, 4, 3, True, False, True),
            (64, 64, 4, 3, False, False, True),
        ]:
            if budget.left() < 30:
                break
            label = (
                f"newkv_m{bm}_n{bn}_w{nw}_s{ns}{'_tma' if tma else '_ptr'}{'_ws' if ws else ''}{'' if rev else '_fwd'}"
            )
            try:
                sw[label] = bench_graph(
                    ours_newkv(
                        config=dict(
                            block_m=bm,
                            block_n=bn,
                            num_warps=nw,
                            num_stages=ns,
                            tma=tma,
                            warp_specialize=ws,
                            reverse_m=rev,
                        )
                    )
                )
            except Exception as e:  # noqa: BLE001
                sw[label] = (
                    f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
                )
        rec["sweep_ms"] = sw
    rec["ms"] = times
    rec["tflop_s"] = {k: flops / (t * 1e-3) / 1e12 for k, t in times.items()}
    sd = {k: t for k, t in times.items() if k.startswith("sdpa_")}
    if sd:
        best = min(sd, key=sd.get)
        rec["fastest_sdpa"] = best
        rec["ours_speed_vs_fastest_sdpa"] = sd[best] / times["ours_paged"]
        if "ours_newkv" in times:
            rec["ours_newkv_speed_vs_fastest_sdpa"] = sd[best] / times["ours_newkv"]
        if "ours_newkv_triton" in times:
            rec["ours_newkv_triton_speed_vs_fastest_sdpa"] = sd[best] / times["ours_newkv_triton"]
        if "ours_paged_triton" in times:
            rec["ours_paged_triton_speed_vs_fastest_sdpa"] = sd[best] / times["ours_paged_triton"]
    return rec
