"""GPU benchmark of the kernels against their baselines, in one process, on the same data.

    python -m kernels.bench --out DIR [--sweep] [--budget-s 360] [--quick] [--flex]
    python -m kernels.bench --out DIR --only flex      # FlexAttention (paged KV) subset only

Writes ``DIR/bench.json`` (every number, the environment and the command) and
``DIR/bench.md`` (tables and the targets, met or missed).  Times are medians of
``triton.testing.do_bench`` (which clears a 256 MB buffer before every timed
run, so nothing is served from L2).  Achieved bandwidth = KV bytes that the
attention must read (sum of the sequence lengths x KV heads x head size x 2
bytes x 2 for K and V) / time; the ceiling is a large device-to-device copy,
counting bytes read plus bytes written.

FlexAttention with paged KV (``--flex`` or ``--only flex``) is measured on a
subset of the decode grid (``FLEX_CASES``), beside our kernel and SDPA on the
same data: ``torch.compile(flex_attention)`` over the physical KV pool viewed
as one long sequence, with a ``BlockMask`` whose KV blocks are the 16-token
pages (see ``flex_paged_block_mask``).  Each new shape costs a compile.

Needs a CUDA GPU; ``--cpu-smoke`` runs tiny shapes on the CPU (Triton
interpreter, and FlexAttention compiled for the CPU) to check this script.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from kernels import cache_ops
from kernels.attention import decode, decode_plan, dispatch, prefill_hopper
from kernels.attention.common import num_sms

GB = 1e9
DTYPE = torch.bfloat16
HEAD = 128
BLOCK = 16
WARMUP_MS = 10
REP_MS = 60
MAX_BYTES = 20 * GB  # skip cases whose KV (or its padded contiguous copy) exceeds this
DEV = "cuda"
SMOKE = False  # --cpu-smoke: tiny shapes on the CPU under TRITON_INTERPRET, to check this script itself


def _bench(fn, rep=REP_MS):
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return do_bench(fn, warmup=WARMUP_MS, rep=rep, return_mode="median")


def _graph(fn):
    """Capture ``fn`` in a CUDA graph (after two warm-up calls on a side stream); return its replay."""
    if SMOKE:
        return fn
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()

    def replay():
        g.replay()

    return replay


def _bench_graph(fn, rep=REP_MS):
    """Median time of a CUDA-graph replay of ``fn`` (L2 cleared before each replay by do_bench)."""
    return _bench(_graph(fn), rep=rep)


def _bench_graph_or_eager(fn, rec, label, rep=REP_MS):
    """Graph-replay time if ``fn`` can be captured, else eager (noted in ``rec['timing']``)."""
    try:
        t = _bench_graph(fn, rep=rep)
        rec.setdefault("timing", {})[label] = "cuda_graph"
        return t
    except Exception as e:  # noqa: BLE001
        torch.cuda.synchronize() if not SMOKE else None
        rec.setdefault("timing", {})[label] = f"eager (graph capture failed: {type(e).__name__})"
        return _bench(fn, rep=rep)


def _cpu_us(fn, n=50):
    """Host time per eager call (launch overhead), with the device left to catch up afterwards."""
    fn()
    if not SMOKE:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n * 1e6
    if not SMOKE:
        torch.cuda.synchronize()
    return dt


class Budget:
    def __init__(self, seconds: float):
        self.t0 = time.time()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.t0)


def env_info(argv) -> dict:
    info = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m kernels.bench " + " ".join(argv),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_runtime": torch.version.cuda,
        "host": platform.node(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            sm_count=p.multi_processor_count,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1),
        )
    try:
        q = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = q.stdout.strip()
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable: {e}"
    return info


def copy_ceiling() -> dict:
    n = (1 << 20) if SMOKE else (1 << 30)  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    t = _bench(lambda: dst.copy_(src), rep=200)
    t2 = _bench(lambda: dst.copy_(src), rep=200)
    del src, dst
    return {
        "bytes_moved": 2 * n,
        "ms": t,
        "ms_repeat": t2,
        "tb_s": 2 * n / (t * 1e-3) / 1e12,
        "tb_s_repeat": 2 * n / (t2 * 1e-3) / 1e12,
    }


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ]


def _run_sdpa(backend, q, k, v, mask=None, is_causal=False, gqa=False):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        kw = {"enable_gqa": True} if gqa else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **kw)


def build_decode_case(batch, hq, hkv, lens, gen_seed=0, need_contig=True):
    """Paged cache (scattered blocks), in-order cache table, and contiguous copies for SDPA."""
    torch.manual_seed(gen_seed)
    nblk = [math.ceil(n / BLOCK) for n in lens]
    width = max(nblk)
    total = sum(nblk)
    k_cache = torch.randn((total, BLOCK, hkv, HEAD), dtype=DTYPE, device=DEV)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(total, device=DEV).to(torch.int32)
    inorder = torch.arange(total, device=DEV, dtype=torch.int32)
    bt = torch.zeros((batch, width), dtype=torch.int32, device=DEV)
    bt_in = torch.zeros_like(bt)
    pos = 0
    for s, n in enumerate(nblk):
        bt[s, :n] = perm[pos : pos + n]
        bt_in[s, :n] = inorder[pos : pos + n]
        pos += n
    q = torch.randn((batch, hq, HEAD), dtype=DTYPE, device=DEV)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    case = dict(k_cache=k_cache, v_cache=v_cache, bt=bt, bt_in=bt_in, q=q, sl=sl, max_len=width * BLOCK)
    if need_contig:
        lmax = width * BLOCK
        # gather through the scattered table: [B, width, BLOCK, hkv, D] -> [B, hkv, Lmax, D]
        kc = k_cache[bt.long()].view(batch, lmax, hkv, HEAD).transpose(1, 2).contiguous()
        vc = v_cache[bt.long()].view(batch, lmax, hkv, HEAD).transpose(1, 2).contiguous()
        case.update(k_contig=kc, v_contig=vc, lmax=lmax)
        if any(n != lmax for n in lens):
            case["mask"] = (torch.arange(lmax, device=DEV)[None, :] < sl[:, None].long())[:, None, None, :]
    return case


def decode_bytes(lens, hkv):
    return sum(lens) * hkv * HEAD * 2 * 2


# --------------------------------------------------------------------------------------
# FlexAttention with paged KV
# --------------------------------------------------------------------------------------

# (layout, batch, context) of the uniform cases, and the names of the mixed cases, that also run FlexAttention.
# Every new shape costs a torch.compile (tens of seconds), so only this subset of the grid is measured.
FLEX_CASES = {
    ("mha", 16, 2048),
    ("mha", 16, 8192),
    ("mha", 64, 2048),
    ("mha", 64, 8192),
    ("gqa", 16, 2048),
    ("gqa", 16, 8192),
    ("gqa", 64, 2048),
    ("gqa", 64, 8192),
}
FLEX_MIXED = {"mixed gqa b64 len1-8192"}
FLEX_SMOKE = {("mha", 2, 40), ("gqa", 2, 300)}
FLEX_SMOKE_MIXED = {"mixed gqa b16 len1-8192"}
_FLEX = {}


def flex_available() -> dict:
    info = {}
    try:
        from torch.nn.attention import flex_attention as fa

        info["flex_attention"] = hasattr(fa, "flex_attention") and hasattr(fa, "BlockMask")
    except Exception as e:  # noqa: BLE001
        info["flex_attention"] = f"unavailable: {type(e).__name__}: {e}"[:200]
    try:
        from torch.nn.attention.experimental import _paged_attention as pg

        info["experimental_PagedAttention_helper"] = hasattr(pg, "PagedAttention")
    except Exception:  # noqa: BLE001
        info["experimental_PagedAttention_helper"] = False
    return info


def _flex_compiled():
    """``torch.compile(flex_attention, dynamic=False)``, made once; one compile per new shape."""
    if "fn" not in _FLEX:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        for name in ("recompile_limit", "cache_size_limit"):  # every case is a new shape: allow them all
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        # static shapes: with dynamic batch/heads inductor would not pick its flex-decoding kernel
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_paged_block_mask(bt, lens, num_blocks):
    """A FlexAttention ``BlockMask`` for decode over the paged cache, gathering nothing.

    K/V are the physical pool viewed as one sequence of ``num_blocks * BLOCK`` tokens
    (``[1, Hkv, num_blocks * BLOCK, D]``, broadcast over the batch).  The mask's KV block
    size is the page size (``BLOCK``), so block ``j`` of the mask is physical page ``j``:

    * full blocks of sequence ``s``: its complete pages ``bt[s, :len // BLOCK]`` (no mask_mod);
    * partial blocks: its last, incomplete page, if any, where mask_mod keeps the valid tokens.

    ``mask_mod`` itself is exact everywhere (page owner == sequence and logical position <
    length), so the eager (unfused) path, which ignores the block lists, gives the same answer.
    The index tensors are ``num_blocks`` wide (as torch's experimental ``PagedAttention`` helper
    makes them), which inductor's CPU lowering needs.  Built from the host-side ``lens``: no sync.
    """
    import inspect

    from torch.nn.attention.flex_attention import BlockMask

    dev = bt.device
    b, width = bt.shape
    nblk = torch.tensor([math.ceil(n / BLOCK) for n in lens], dtype=torch.int64, device=dev)
    n_full = torch.tensor([n // BLOCK for n in lens], dtype=torch.int32, device=dev)
    has_part = torch.tensor([int(n % BLOCK != 0) for n in lens], dtype=torch.int32, device=dev)
    sl = torch.tensor(lens, dtype=torch.int32, device=dev)
    cols = torch.arange(width, device=dev)
    full_idx = torch.zeros((b, num_blocks), dtype=torch.int32, device=dev)
    full_idx[:, :width] = torch.where(cols[None, :] < n_full[:, None].long(), bt, torch.zeros_like(bt))
    part_idx = torch.zeros((b, num_blocks), dtype=torch.int32, device=dev)
    last = bt.gather(1, n_full.long().clamp(max=width - 1)[:, None])[:, 0]
    part_idx[:, 0] = torch.where(has_part.bool(), last, torch.zeros_like(last))
    # page -> (owning sequence, logical page index); -1 = free page
    valid = cols[None, :] < nblk[:, None]
    rows = torch.arange(b, device=dev, dtype=torch.int32)[:, None].expand(b, width)
    pages = bt[valid].long()
    owner = torch.full((num_blocks,), -1, dtype=torch.int32, device=dev)
    logical = torch.zeros((num_blocks,), dtype=torch.int32, device=dev)
    owner[pages] = rows[valid]
    logical[pages] = cols[None, :].expand(b, width)[valid].to(torch.int32)

    def mask_mod(bi, h, q_idx, kv_idx):
        page = kv_idx // BLOCK
        return (owner[page] == bi) & (logical[page] * BLOCK + kv_idx % BLOCK < sl[bi])

    kw = {}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kw["compute_q_blocks"] = False  # forward only: no transposed (q-block) lists
    return BlockMask.from_kv_blocks(
        has_part.view(b, 1, 1),
        part_idx.view(b, 1, 1, num_blocks),
        n_full.view(b, 1, 1),
        full_idx.view(b, 1, 1, num_blocks),
        BLOCK_SIZE=(128, BLOCK),
        mask_mod=mask_mod,
        seq_lengths=(1, num_blocks * BLOCK),
        **kw,
    )


def _flex_fn(c, lens, hq, hkv, scale):
    """The timed FlexAttention call on case ``c`` (no gather; the cache is read in place)."""
    q, kc, vc = c["q"], c["k_cache"], c["v_cache"]
    batch, nb = q.shape[0], kc.shape[0]
    bm = flex_paged_block_mask(c["bt"], lens, nb)
    q4 = q.view(batch, hq, 1, HEAD)
    k4 = kc.view(1, nb * BLOCK, hkv, HEAD).transpose(1, 2)  # [1, Hkv, pool tokens, D], strided view
    v4 = vc.view(1, nb * BLOCK, hkv, HEAD).transpose(1, 2)
    kw = {"enable_gqa": True} if hq != hkv else {}
    if _FLEX.get("cpu_eager"):  # --cpu-smoke only, after the CPU compile failed once
        from torch.nn.attention.flex_attention import flex_attention as flex
    else:
        flex = _flex_compiled()
    return lambda: flex(q4, k4, v4, block_mask=bm, scale=scale, **kw)


def measure_flex(c, rec, times, eager, lens, hq, hkv, scale, ref_out):
    """Time FlexAttention (paged) on the case's data; record compile time and error vs the reference."""
    batch = c["q"].shape[0]
    t0 = time.time()
    fn = _flex_fn(c, lens, hq, hkv, scale)
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        if not SMOKE:
            raise
        # CPU smoke only: inductor's CPU flex lowering may be unavailable; the eager path checks the mask
        print(
            f"flex: CPU compile failed ({type(e).__name__}: {str(e)[:200]}); eager flex_attention from now on",
            flush=True,
        )
        _FLEX["cpu_eager"] = f"eager flex_attention (CPU compile failed: {type(e).__name__})"
        fn = _flex_fn(c, lens, hq, hkv, scale)
        out = fn()
    rec["flex_mode"] = _FLEX.get("cpu_eager") or "torch.compile(flex_attention, dynamic=False)"
    if not SMOKE:
        torch.cuda.synchronize()
    rec["flex_first_call_s"] = time.time() - t0  # compile included
    out = out.view(batch, hq, HEAD).float()
    rec["flex_nan"] = bool(torch.isnan(out).any().item())
    rec["flex_max_abs_err_vs_ref"] = (out - ref_out).abs().max().item()
    times["flex_paged"] = _bench_graph_or_eager(fn, rec, "flex_paged")
    eager["flex_paged"] = _bench(fn)
    rec.setdefault("cpu_us_per_call", {})["flex_paged"] = _cpu_us(fn)


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
    dcfg = decode_plan.decode_config(HEAD, hq // hkv, DTYPE, BLOCK, batch * hkv, num_sms(q.device))
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
    times["ours_scattered"] = _bench_graph(ours())
    times["ours_inorder"] = _bench_graph(ours(bt_in))
    if splits > 1:  # A/B in the same process: the split-KV reduce fused (forced) and in a second launch (forced)
        times["ours_two_kernel"] = _bench_graph(ours(fused_reduce=False))
        times["ours_fused"] = _bench_graph(ours(fused_reduce=True))
    rec["default_fused"] = splits > 1 and (dcfg["fuse_always"] or decode_plan.auto_fused(batch, hkv, splits, q.device))
    # the host hint min_seq_len changes the split choice, or marks the batch as mixed (the balanced path)
    rec["hint_balanced"] = decode_plan.balanced_default(batch, hkv, max_len, min(lens), None)
    if (hint_splits, hint_part) != (splits, part) or rec["hint_balanced"]:
        times["ours_hint"] = _bench_graph(ours(min_seq_len=min(lens)))
    if batch >= 16:  # the balanced (stream-K) path forced on
        times["ours_balanced"] = _bench_graph(ours(config={"balanced": True}))
    eager["ours_scattered"] = _bench(ours())
    rec["cpu_us_per_call"] = {"ours": _cpu_us(ours())}
    res = {}
    if sdpa_ok:
        q4 = q.view(batch, hq, 1, HEAD)
        gqa = hq != hkv
        mask = c.get("mask")
        for bname, backend in _sdpa_backends():
            try:
                res[bname] = _run_sdpa(backend, q4, c["k_contig"], c["v_contig"], mask, gqa=gqa)
                fn = lambda b=backend: _run_sdpa(b, q4, c["k_contig"], c["v_contig"], mask, gqa=gqa)
                eager[f"sdpa_{bname}"] = _bench(fn)
                rec["cpu_us_per_call"][f"sdpa_{bname}"] = _cpu_us(fn)
                try:
                    times[f"sdpa_{bname}"] = _bench_graph(fn)
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
            if not SMOKE:
                torch.cuda.synchronize()
        del ref_out
    times["ours_scattered_repeat"] = _bench_graph(ours())
    if extra_configs:
        sweep = {}
        for label, kw in extra_configs:
            if budget.left() < 30:
                sweep[label] = "skipped: budget"
                continue
            try:
                sweep[label] = _bench_graph(ours(**kw))
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
    del c, res, out
    torch.cuda.empty_cache()
    return rec


def decode_sweep_configs(hq, hkv, batch, max_len):
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


# --------------------------------------------------------------------------------------
# prefill
# --------------------------------------------------------------------------------------


def measure_prefill(name, batch, hq, hkv, ctx, new, budget, sweep=False):
    torch.manual_seed(1)
    total_len = ctx + new
    nblk = math.ceil(total_len / BLOCK)
    nb = batch * nblk
    k_cache = torch.randn((nb, BLOCK, hkv, HEAD), dtype=DTYPE, device=DEV)
    v_cache = torch.randn_like(k_cache)
    bt = torch.randperm(nb, device=DEV).to(torch.int32).view(batch, nblk)
    q = torch.randn((batch * new, hq, HEAD), dtype=DTYPE, device=DEV)
    cu = torch.arange(0, batch + 1, dtype=torch.int32, device=DEV) * new
    ctx_t = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
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

    times = {"ours_paged": _bench_graph_or_eager(ours(), rec, "ours_paged")}
    # the paged column runs the Gluon kernel's paged form where it can; the Triton paged kernel beside it
    ok, why = prefill_hopper.supported_paged(q, k_cache, v_cache, scale)
    rec["paged_kernel"] = "gluon (kernels.attention.prefill_hopper, paged)" if ok else f"triton ({why})"
    try:
        times["ours_paged_triton"] = _bench_graph_or_eager(ours(config={"wgmma": False}), rec, "ours_paged_triton")
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
        times["ours_newkv"] = _bench_graph_or_eager(ours_newkv(), rec, "ours_newkv")
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
            times["ours_newkv_triton"] = _bench_graph_or_eager(
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
    for bname, backend in _sdpa_backends():
        try:
            r = _run_sdpa(backend, q4, kc, vc, mask, is_causal=causal, gqa=gqa)
            ref = r if ref is None else ref
            times[f"sdpa_{bname}"] = _bench_graph_or_eager(
                lambda b=backend: _run_sdpa(b, q4, kc, vc, mask, is_causal=causal, gqa=gqa), rec, f"sdpa_{bname}"
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
                sw[label] = _bench_graph(
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
    del k_cache, v_cache, kc, vc, kn, vn, q4, out
    torch.cuda.empty_cache()
    return rec


# --------------------------------------------------------------------------------------
# cache write and block copy
# --------------------------------------------------------------------------------------


def measure_write_kv(tokens, heads, ceiling_tb_s):
    torch.manual_seed(2)
    num_blocks = 64 if SMOKE else 32768
    kc = torch.randn((num_blocks, BLOCK, heads, HEAD), dtype=DTYPE, device=DEV)
    vc = torch.randn_like(kc)
    key = torch.randn((tokens, heads, HEAD), dtype=DTYPE, device=DEV)
    val = torch.randn_like(key)
    slots = torch.randperm(num_blocks * BLOCK, device=DEV)[:tokens]
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
        "ours_write_kv": _bench_graph_or_eager(lambda: cache_ops.write_kv(key, val, kc, vc, slots), rec, "ours"),
        "torch_index_copy": _bench_graph_or_eager(torch_index_copy, rec, "torch_index_copy"),
        "contiguous_copy_same_bytes": _bench_graph_or_eager(plain_copy, rec, "copy"),
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
    del kc, vc
    torch.cuda.empty_cache()
    return rec


def measure_copy_blocks(layers, pairs, heads, ceiling_tb_s):
    torch.manual_seed(3)
    num_blocks = 64 if SMOKE else 2048
    caches = [torch.randn((num_blocks, BLOCK, heads, HEAD), dtype=DTYPE, device=DEV) for _ in range(2 * layers)]
    perm = torch.randperm(num_blocks, device=DEV)
    mapping = torch.stack([perm[:pairs], perm[pairs : 2 * pairs]], dim=1).contiguous()
    src, dst = mapping[:, 0].contiguous(), mapping[:, 1].contiguous()
    per_block = BLOCK * heads * HEAD * 2
    moved = 2 * pairs * per_block * len(caches)

    def torch_loop():
        for c in caches:
            c.index_copy_(0, dst, c.index_select(0, src))

    rec = {}
    times = {
        "ours_copy_blocks": _bench_graph_or_eager(lambda: cache_ops.copy_blocks(caches, mapping), rec, "ours"),
        "torch_loop_index_copy": _bench_graph_or_eager(torch_loop, rec, "torch_loop"),
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
    del caches
    torch.cuda.empty_cache()
    return rec


# --------------------------------------------------------------------------------------
# targets and report
# --------------------------------------------------------------------------------------


def evaluate_targets(result) -> list[dict]:
    dec = [r for r in result["decode"] if "ms" in r]
    tg = []

    def add(name, case, value, threshold, ok, unit=""):
        tg.append({"target": name, "case": case, "value": value, "threshold": threshold, "met": bool(ok), "unit": unit})

    for r in dec:
        if r["kv_bytes"] >= 1 * GB and not r["case"].startswith("mixed") and "ours_speed_vs_fastest_sdpa" in r:
            v = r["ours_speed_vs_fastest_sdpa"]
            add(">=1GB: speed vs fastest SDPA >= 0.97", r["case"], v, 0.97, v >= 0.97, "x")
    for r in dec:
        if "ours_hint_speed_vs_fastest_sdpa" in r and r["kv_bytes"] >= 1 * GB and not r["case"].startswith("mixed"):
            v = r["ours_hint_speed_vs_fastest_sdpa"]
            add(
                ">=1GB: speed vs fastest SDPA >= 0.97, with the min_seq_len host hint",
                r["case"],
                v,
                0.97,
                v >= 0.97,
                "x",
            )
    for r in dec:
        if r["case"].startswith("mixed") and r["batch"] >= 16:
            v = r["frac_of_copy"]["ours_scattered"]
            add("mixed, batch>=16: >= 90% of copy ceiling", r["case"], v, 0.90, v >= 0.90, "frac")
    for r in dec:
        if r["batch"] in (1, 16) and r["max_len"] == 8192 and not r["case"].startswith("mixed"):
            if "ours_speed_vs_fastest_sdpa" in r:
                v = r["ours_speed_vs_fastest_sdpa"]
                add("batch 1/16 x 8192: at least as fast as fastest SDPA", r["case"], v, 1.0, v >= 1.0, "x")
    for r in dec:
        v = r["paging_overhead"]
        add("paging overhead < 3%", r["case"], v, 0.03, v < 0.03, "frac")
    for r in result.get("prefill", []):
        if "ours_speed_vs_fastest_sdpa" in r:
            v = r["ours_speed_vs_fastest_sdpa"]
            add("prefill: >= 90% of fastest SDPA FLOP rate", r["case"], v, 0.90, v >= 0.90, "x")
        if "ours_newkv_speed_vs_fastest_sdpa" in r:
            v = r["ours_newkv_speed_vs_fastest_sdpa"]
            add(
                "prefill, new K/V contiguous (new_key/new_value): >= 90% of fastest SDPA FLOP rate",
                r["case"],
                v,
                0.90,
                v >= 0.90,
                "x",
            )
    for r in result.get("write_kv", []):
        v = r["ours_vs_torch_index_copy"]
        add("write_kv: >= 90% of torch index_copy bandwidth", r["case"], v, 0.90, v >= 0.90, "x")
    return tg


def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}"


def _splits_cell(r):
    """The default's split count; "u" marks a grid whose near-uniform lengths take the hint's partition on the device."""
    return f"{r['auto_splits']}u" if r.get("auto_uniform_partition") else f"{r['auto_splits']}"


def _eager_cell(r):
    e = r.get("eager_ms", {})
    sd = [v for k, v in e.items() if k.startswith("sdpa_")]
    if "ours_scattered" not in e:
        return "-"
    if not sd:
        return f"{e['ours_scattered']:.4f} / - / -"
    return f"{e['ours_scattered']:.4f} / {min(sd):.4f} / {min(sd) / e['ours_scattered']:.3f}"


def write_markdown(result, path):
    e = result["env"]
    L = []
    L.append("# Kernel benchmark\n")
    L.append(
        f"- device: {e.get('device')} ({e.get('sm_count')} SMs, {e.get('gpu_memory_gib')} GiB); "
        f"nvidia-smi: {e.get('nvidia_smi')}"
    )
    L.append(
        f"- date (UTC): {e['date_utc']}; torch {e['torch']}, triton {e['triton']}, CUDA {e['cuda_runtime']}, "
        f"python {e['python']}"
    )
    L.append(f"- command: `{e['command']}`")
    c = result.get("copy_ceiling", {})
    L.append(
        f"- copy ceiling (1 GiB device-to-device copy, read + write): {_f(c.get('tb_s'), 2)} TB/s "
        f"(repeat {_f(c.get('tb_s_repeat'), 2)})"
    )
    L.append(
        "- times: medians of triton.testing.do_bench (L2 cleared before each run) over CUDA-graph replays "
        "of each method (ours and every SDPA backend alike; for prefill, write and copy too, with an eager "
        "fallback noted in the JSON's `timing` if capture fails), so host launch overhead is excluded; eager "
        "(no graph) times are in the JSON (`eager_ms`, `cpu_us_per_call`) and in the last decode columns; "
        "bf16, head size 128, 16-token blocks; bandwidth = KV bytes read / time"
    )
    L.append(
        "- splits: the default's split count; `u` marks a grid on which near-uniform lengths take the "
        "`min_seq_len` hint's partition instead (the kernel tests the lengths on the device)\n"
    )
    L.append("## Decode\n")
    L.append(
        "| case | KV GB | splits | ours scattered ms | ours in-order ms | paging ovh | flash ms | efficient ms |"
        " cudnn ms | ours/best SDPA speed | ours TB/s | ours % copy | best SDPA % copy |"
        " eager: ours ms / best SDPA ms / speed |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["decode"]:
        if "ms" not in r:
            L.append(
                f"| {r['case']} | {_f(r['kv_gb'], 2)} | skipped: {r.get('skipped', r.get('error', ''))} |" + " |" * 10
            )
            continue
        m, fr = r["ms"], r["frac_of_copy"]
        best = r.get("fastest_sdpa")
        L.append(
            f"| {r['case']} | {_f(r['kv_gb'], 2)} | {_splits_cell(r)} | {_f(m['ours_scattered'], 4)} | "
            f"{_f(m['ours_inorder'], 4)} | {100 * r['paging_overhead']:+.1f}% | {_f(m.get('sdpa_flash'), 4)} | "
            f"{_f(m.get('sdpa_efficient'), 4)} | {_f(m.get('sdpa_cudnn'), 4)} | "
            f"{_f(r.get('ours_speed_vs_fastest_sdpa'), 3)} | {_f(r['tb_s']['ours_scattered'], 2)} | "
            f"{100 * fr['ours_scattered']:.1f}% | {('-' if best is None else f'{100 * fr[best]:.1f}% ({best[5:]})')} |"
            f" {_eager_cell(r)} |"
        )
    var = [
        r
        for r in result["decode"]
        if "ms" in r and any(k in r["ms"] for k in ("ours_two_kernel", "ours_hint", "ours_balanced"))
    ]
    if var:
        L.append("\n### Decode variants, same process (graph-replay medians)\n")
        L.append(
            "- default = `fused_reduce=None` (fused when the grid is one wave of resident programs, and on every "
            "split grid of the small-grid config: fewer (sequence, KV head) pairs than SMs); fused = "
            "`fused_reduce=True` (the last program of each (sequence, KV head) combines the partials); "
            "two-kernel = the old path with a second reduce launch (`fused_reduce=False`); "
            "hint = default plus `min_seq_len=min(lengths)` (lifts the 2,048-token partition cap for "
            "near-uniform batches that fill a wave, and takes the balanced path on batches it marks as mixed, "
            "`bal` in the splits column); balanced = `config={'balanced': True}` (one program per resident "
            "slot, equal shares of the tiles; batch >= 16)\n"
        )
        L.append(
            "| case | splits (default / hint) | default fuses? | default ms | fused ms | two-kernel ms | "
            "fused speed-up | hint ms | balanced ms | best SDPA ms | balanced % copy | "
            "default / fused / two-kernel / hint / balanced speed vs best SDPA |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in var:
            m = r["ms"]
            sd = r.get("fastest_sdpa")
            bfr = r["frac_of_copy"].get("ours_balanced")
            L.append(
                f"| {r['case']} | {_splits_cell(r)} / {'bal' if r.get('hint_balanced') else r.get('hint_splits', '-')} | "
                f"{'yes' if r.get('default_fused') else 'no'} | {_f(m['ours_scattered'], 4)} | "
                f"{_f(m.get('ours_fused'), 4)} | "
                f"{_f(m.get('ours_two_kernel'), 4)} | {_f(r.get('fused_speedup_vs_two_kernel'), 3)} | "
                f"{_f(m.get('ours_hint'), 4)} | {_f(m.get('ours_balanced'), 4)} | "
                f"{_f(m.get(sd) if sd else None, 4)} | {'-' if bfr is None else f'{100 * bfr:.1f}%'} | "
                f"{_f(r.get('ours_speed_vs_fastest_sdpa'), 3)} / "
                f"{_f(r.get('ours_fused_speed_vs_fastest_sdpa'), 3)} / "
                f"{_f(r.get('ours_two_kernel_speed_vs_fastest_sdpa'), 3)} / "
                f"{_f(r.get('ours_hint_speed_vs_fastest_sdpa'), 3)} / "
                f"{_f(r.get('ours_balanced_speed_vs_fastest_sdpa'), 3)} |"
            )
    errs = {k: v for r in result["decode"] for k, v in r.items() if k.endswith("_error")}
    if errs:
        L.append("\nBackends that refused a case (first message of each kind):\n")
        seen = set()
        for r in result["decode"]:
            for k, v in r.items():
                if k.endswith("_error") and (k, v[:60]) not in seen:
                    seen.add((k, v[:60]))
                    L.append(f"- {r['case']}: {k[:-6]}: {v}")
    flex = [r for r in result["decode"] if "flex_error" in r or "flex_paged" in r.get("ms", {})]
    if flex:
        L.append("\n## FlexAttention with paged KV (subset of the decode grid)\n")
        fa = result["env"].get("flex", {})
        L.append(
            f"- torch {result['env']['torch']}: flex_attention {fa.get('flex_attention')}; experimental "
            f"PagedAttention helper present: {fa.get('experimental_PagedAttention_helper')} (not used: the "
            f"BlockMask is built directly, as that helper would build it)"
        )
        L.append(f"- FlexAttention cases: {result.get('flex_cases', '-')}")
        L.append(
            "- flex: `torch.compile(flex_attention, dynamic=False)` on the physical pool viewed as one "
            "sequence `[1, Hkv, pages x 16, D]`, BlockMask with 16-token KV blocks = the pages of each "
            "sequence (full pages as full blocks, the last partial page masked by mask_mod); nothing "
            "gathered. Same q, cache and scattered block table as ours; graph-replay medians like the rest."
        )
        L.append("- errors: max abs error of each output against `kernels.reference.ref_paged_decode` (fp32)\n")
        L.append(
            "| case | KV GB | ours ms | flex ms | flex/ours time (ours speed-up) | best SDPA ms | "
            "flex % copy | ours err | flex err | flex first call s (compile) | flex timing |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in flex:
            m = r.get("ms", {})
            sd = r.get("fastest_sdpa")
            if "flex_paged" not in m:
                L.append(
                    f"| {r['case']} | {_f(r.get('kv_gb'), 2)} | {_f(m.get('ours_scattered'), 4)} | "
                    f"error: {r.get('flex_error', '')} |" + " |" * 7
                )
                continue
            L.append(
                f"| {r['case']} | {_f(r['kv_gb'], 2)} | {_f(m['ours_scattered'], 4)} | "
                f"{_f(m['flex_paged'], 4)} | {_f(r.get('ours_speed_vs_flex'), 2)} | "
                f"{_f(m.get(sd) if sd else None, 4)} | {100 * r['frac_of_copy']['flex_paged']:.1f}% | "
                f"{_f(r.get('ours_max_abs_err_vs_ref'), 4)} | {_f(r.get('flex_max_abs_err_vs_ref'), 4)} | "
                f"{_f(r.get('flex_first_call_s'), 1)} | {r.get('timing', {}).get('flex_paged', '-')} |"
            )
    if result.get("prefill"):
        L.append("\n## Prefill with cached context\n")
        L.append(
            "- ours (paged) reads every key through the block table; ours (new K/V) reads the new tokens' K/V "
            "from the contiguous tensors a serving step has just computed (`new_key`/`new_value`, TMA tiles) "
            "and only the context through the table\n"
        )
        L.append(
            "| case | ours (paged) ms | ours (new K/V) ms | flash ms | efficient ms | cudnn ms | ours (paged) "
            "TFLOP/s | ours (new K/V) TFLOP/s | best SDPA TFLOP/s | paged / new-K/V speed vs best |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in result["prefill"]:
            if "ms" not in r:
                L.append(f"| {r['case']} | error: {r.get('error', '')} |" + " |" * 8)
                continue
            m, tf = r["ms"], r["tflop_s"]
            best = r.get("fastest_sdpa")
            L.append(
                f"| {r['case']} | {_f(m['ours_paged'], 4)} | {_f(m.get('ours_newkv'), 4)} | "
                f"{_f(m.get('sdpa_flash'), 4)} | "
                f"{_f(m.get('sdpa_efficient'), 4)} | {_f(m.get('sdpa_cudnn'), 4)} | {_f(tf['ours_paged'], 1)} | "
                f"{_f(tf.get('ours_newkv'), 1)} | "
                f"{_f(tf.get(best) if best else None, 1)} | {_f(r.get('ours_speed_vs_fastest_sdpa'), 3)} / "
                f"{_f(r.get('ours_newkv_speed_vs_fastest_sdpa'), 3)} |"
            )
        for r in result["prefill"]:
            if "paged_kernel" in r:
                L.append(
                    f"\n{r['case']}: the paged column ran {r['paged_kernel']}; the Triton paged kernel beside "
                    f"it: {_f(r.get('ms', {}).get('ours_paged_triton'), 4)} ms, "
                    f"{_f(r.get('ours_paged_triton_speed_vs_fastest_sdpa'), 3)}x of the best SDPA"
                )
            if "newkv_kernel" in r:
                L.append(
                    f"\n{r['case']}: the new-K/V column ran {r['newkv_kernel']}; the Triton new-K/V kernel "
                    f"beside it: {_f(r.get('ms', {}).get('ours_newkv_triton'), 4)} ms, "
                    f"{_f(r.get('ours_newkv_triton_speed_vs_fastest_sdpa'), 3)}x of the best SDPA"
                )
    if result.get("write_kv") or result.get("copy_blocks"):
        L.append("\n## Cache write and block copy\n")
        L.append("| case | ours ms | baseline ms | ours TB/s | baseline TB/s | ours/baseline speed | ours % copy |")
        L.append("|---|---|---|---|---|---|---|")
        for r in result.get("write_kv", []):
            if "error" in r:
                L.append(f"| {r['case']} | error: {r['error']} |" + " |" * 5)
                continue
            m, t = r["ms"], r["tb_s"]
            L.append(
                f"| {r['case']} (baseline: torch index_copy_) | {_f(m['ours_write_kv'], 4)} | "
                f"{_f(m['torch_index_copy'], 4)} | {_f(t['ours_write_kv'], 2)} | {_f(t['torch_index_copy'], 2)} |"
                f" {_f(r['ours_vs_torch_index_copy'], 2)} | {100 * r['ours_frac_of_copy_ceiling']:.1f}% |"
            )
        for r in result.get("copy_blocks", []):
            m, t = r["ms"], r["tb_s"]
            L.append(
                f"| {r['case']} (baseline: per-cache index_copy_ loop) | {_f(m['ours_copy_blocks'], 4)} | "
                f"{_f(m['torch_loop_index_copy'], 4)} | {_f(t['ours_copy_blocks'], 2)} | "
                f"{_f(t['torch_loop_index_copy'], 2)} | {_f(r['ours_vs_torch'], 2)} | "
                f"{100 * r['ours_frac_of_copy_ceiling']:.1f}% |"
            )
    L.append("\n## Targets\n")
    L.append("| target | case | value | threshold | met |")
    L.append("|---|---|---|---|---|")
    for t in result.get("targets", []):
        L.append(
            f"| {t['target']} | {t['case']} | {_f(t['value'], 3)} | {t['threshold']} | {'yes' if t['met'] else 'NO'} |"
        )
    sweeps = [r for r in result["decode"] + result.get("prefill", []) if r.get("sweep_ms")]
    if sweeps:
        L.append("\n## Config sweep (ms, median)\n")
        for r in sweeps:
            base = r["ms"].get("ours_scattered", r["ms"].get("ours_paged"))
            items = ", ".join(f"{k}: {_f(v, 4) if not isinstance(v, str) else v}" for k, v in r["sweep_ms"].items())
            L.append(f"- {r['case']} (default {_f(base, 4)}): {items}")
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=360.0, help="stop starting new cases after this long")
    ap.add_argument("--sweep", action="store_true", help="also time alternative kernel configs on a few cases")
    ap.add_argument("--quick", action="store_true", help="a few cases only")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: decode,mixed,prefill,cache")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of sections to run (decode,mixed,prefill,cache,flex); "
        "'--only flex' runs just the FlexAttention subset of the decode grid (ours, SDPA and flex)",
    )
    ap.add_argument(
        "--flex",
        action="store_true",
        help="also measure FlexAttention (paged KV) on its subset of "
        "the decode grid (one torch.compile per new shape, about 2 s each on the H100)",
    )
    ap.add_argument(
        "--flex-cases",
        choices=("subset", "all"),
        default="subset",
        help="FlexAttention on FLEX_CASES/FLEX_MIXED only (default) or on every decode and mixed case",
    )
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global DEV, SMOKE, DTYPE
    if args.cpu_smoke:
        DEV, SMOKE, DTYPE = "cpu", True, torch.float16
    sections = {"decode", "mixed", "prefill", "cache", "flex"}
    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    if (only | skip) - sections:
        ap.error(f"unknown section(s) {sorted((only | skip) - sections)}; known: {sorted(sections)}")
    if only:
        skip |= sections - only
        if only == {"flex"}:  # the flex subset of the decode and mixed cases only
            skip -= {"decode", "mixed"}
    elif not args.flex:
        skip.add("flex")
    flex_only = only == {"flex"}
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit(
            "kernels.bench needs a CUDA GPU (no CUDA device in this torch "
            f"{torch.__version__}); '--cpu-smoke' checks the script on tiny CPU shapes"
            + (", FlexAttention included" if "flex" not in skip else "")
        )
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget_s)
    result = {"env": env_info(argv), "decode": [], "prefill": [], "write_kv": [], "copy_blocks": []}
    if "flex" not in skip:
        result["env"]["flex"] = flex_available()
        uni = ", ".join(f"{lay} b{b} ctx{L}" for lay, b, L in sorted(FLEX_SMOKE if SMOKE else FLEX_CASES))
        mix = ", ".join(sorted(FLEX_SMOKE_MIXED if SMOKE else FLEX_MIXED))
        result["flex_cases"] = (
            "every decode and mixed case run" if args.flex_cases == "all" else f"uniform: {uni}; mixed: {mix}"
        )
    json_path = os.path.join(args.out, "bench.json")
    md_path = os.path.join(args.out, "bench.md")

    def save():
        result["targets"] = evaluate_targets(result)
        result["elapsed_s"] = time.time() - budget.t0
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=1)
        write_markdown(result, md_path)

    result["copy_ceiling"] = copy_ceiling()
    ceil = result["copy_ceiling"]["tb_s"]
    print(f"copy ceiling {ceil:.3f} TB/s", flush=True)

    layouts = [(32, 32), (32, 8)]
    batches = [1, 16, 64, 256]
    ctxs = [512, 2048, 8192]
    if args.quick:
        batches, ctxs = [1, 64], [2048, 8192]
    if SMOKE:
        layouts, batches, ctxs = [(4, 4), (4, 1)], [1, 2], [40, 300]
    sweep_cases = {
        ("mha", 64, 2048),
        ("gqa", 64, 8192),
        ("mha", 1, 8192),
        ("gqa", 1, 8192),
        ("mha", 16, 8192),
        ("gqa", 16, 8192),
        ("gqa", 256, 2048),
    }
    fcases, fmixed = (FLEX_SMOKE, FLEX_SMOKE_MIXED) if SMOKE else (FLEX_CASES, FLEX_MIXED)
    flex_all = args.flex_cases == "all"
    if flex_only and not flex_all:
        # the flex subset at any grid size (it may lie outside --quick's grid)
        batches = sorted({b for _, b, _ in fcases})
        ctxs = sorted({L for _, _, L in fcases}, reverse=True)
    cases = []
    if "decode" not in skip:
        for hq, hkv in layouts:
            lay = "mha" if hq == hkv else "gqa"
            for b in batches:
                for L in ctxs:
                    fl = "flex" not in skip and (flex_all or (lay, b, L) in fcases)
                    if flex_only and not fl:
                        continue
                    cases.append((f"{lay} b{b} ctx{L}", b, hq, hkv, [L] * b, (lay, b, L) in sweep_cases, fl))
    if "mixed" not in skip:
        import random

        for hq, hkv in layouts:
            lay = "mha" if hq == hkv else "gqa"
            for b in ([16, 64] if args.quick else [16, 64, 256]) if not SMOKE else [16]:
                rng = random.Random(1000 + b)
                lens = [rng.randint(1, 100 if SMOKE else 8192) for _ in range(b)]
                name = f"mixed {lay} b{b} len1-8192"
                fl = "flex" not in skip and (flex_all or name in fmixed)
                if flex_only and not fl:
                    continue
                cases.append((name, b, hq, hkv, lens, b in (16, 64) and lay == "gqa" or (b == 16 and lay == "mha"), fl))
    if flex_only:  # longest contexts first (mixed after the 8,192 ones): they matter most if the budget runs out
        cases.sort(key=lambda c: (-max(c[4]), c[1]))
    for name, b, hq, hkv, lens, sw, fl in cases:
        if budget.left() < 20:
            result["decode"].append({"case": name, "kv_gb": decode_bytes(lens, hkv) / GB, "skipped": "budget"})
            continue
        t0 = time.time()
        try:
            extra = decode_sweep_configs(hq, hkv, b, max(lens)) if (args.sweep and sw) else None
            r = measure_decode(name, b, hq, hkv, lens, ceil, budget, extra_configs=extra, with_flex=fl)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            r = {
                "case": name,
                "kv_gb": decode_bytes(lens, hkv) / GB,
                "error": f"{type(e).__name__}: {e}"[:300],
                "skipped": "error",
            }
            torch.cuda.empty_cache()
        result["decode"].append(r)
        if "ms" in r:
            print(
                f"{name:28s} {r['kv_gb']:7.2f} GB splits={r['auto_splits']:3d} ours {r['ms']['ours_scattered']:.4f} ms "
                f"({100 * r['frac_of_copy']['ours_scattered']:.1f}% copy) inorder {r['ms']['ours_inorder']:.4f} "
                f"best sdpa {r.get('fastest_sdpa')} speed x{r.get('ours_speed_vs_fastest_sdpa', float('nan')):.3f} "
                f"diff {r.get('max_abs_diff_vs_sdpa', float('nan')):.3g} eager x"
                f"{r.get('eager_ours_speed_vs_fastest_sdpa', float('nan')):.3f}"
                + (
                    f" | fused {r['ms']['ours_fused']:.4f} two-kernel {r['ms']['ours_two_kernel']:.4f} "
                    f"(fused x{r['fused_speedup_vs_two_kernel']:.3f}, default fused={r['default_fused']})"
                    if "ours_two_kernel" in r["ms"]
                    else ""
                )
                + (
                    f" | hint splits={r['hint_splits']} {r['ms']['ours_hint']:.4f} "
                    f"x{r.get('ours_hint_speed_vs_fastest_sdpa', float('nan')):.3f}"
                    if "ours_hint" in r["ms"]
                    else ""
                )
                + (
                    f" | balanced {r['ms']['ours_balanced']:.4f} ({100 * r['frac_of_copy']['ours_balanced']:.1f}% copy)"
                    if "ours_balanced" in r["ms"]
                    else ""
                )
                + (
                    f" | flex {r['ms']['flex_paged']:.4f} ms (ours x{r['ours_speed_vs_flex']:.2f}) err flex "
                    f"{r['flex_max_abs_err_vs_ref']:.3g} ours {r['ours_max_abs_err_vs_ref']:.3g} first call "
                    f"{r['flex_first_call_s']:.1f}s"
                    if "flex_paged" in r["ms"]
                    else ""
                )
                + (f" | flex error: {r['flex_error']}" if "flex_error" in r else "")
                + f" [{time.time() - t0:.1f}s]",
                flush=True,
            )
        else:
            print(f"{name:28s} skipped: {r.get('skipped')} {r.get('error', '')}", flush=True)
        save()

    if "prefill" not in skip:
        pcases = [
            ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, True),
            ("prefill mha 4x1024 ctx3072", 4, 32, 32, 3072, 1024, True),
            ("prefill gqa 4x1024 ctx3072", 4, 32, 8, 3072, 1024, False),
            ("chunked mha 16x256 ctx1792", 16, 32, 32, 1792, 256, False),
        ]
        if SMOKE:
            pcases = [
                ("prefill mha 2x40 ctx0", 2, 4, 4, 0, 40, True),
                ("prefill gqa 2x20 ctx33", 2, 4, 2, 33, 20, False),
            ]
        for name, b, hq, hkv, ctx, new, sw in pcases:
            if budget.left() < 20:
                result["prefill"].append({"case": name, "skipped": "budget"})
                continue
            t0 = time.time()
            try:
                r = measure_prefill(name, b, hq, hkv, ctx, new, budget, sweep=sw and args.sweep)
                print(
                    f"{name:28s} ours {r['ms']['ours_paged']:.4f} ms {r['tflop_s']['ours_paged']:.1f} TFLOP/s "
                    f"best {r.get('fastest_sdpa')} x{r.get('ours_speed_vs_fastest_sdpa', float('nan')):.3f} "
                    f"diff {r.get('max_abs_diff_vs_sdpa', float('nan')):.3g} | newkv "
                    f"{r['ms'].get('ours_newkv', float('nan')):.4f} ms "
                    f"x{r.get('ours_newkv_speed_vs_fastest_sdpa', float('nan')):.3f} "
                    f"diff {r.get('newkv_max_abs_diff_vs_sdpa', float('nan')):.3g} {r.get('ours_newkv_error', '')}"
                    f" [{time.time() - t0:.1f}s]",
                    flush=True,
                )
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                r = {"case": name, "error": f"{type(e).__name__}: {e}"[:300]}
                torch.cuda.empty_cache()
            result["prefill"].append(r)
            save()

    if "cache" not in skip:
        for tokens, heads in [(256, 8), (8192, 8), (65536, 8), (8192, 32)] if not SMOKE else [(16, 2)]:
            if budget.left() < 10:
                break
            try:
                r = measure_write_kv(tokens, heads, ceil)
                print(
                    f"{r['case']:28s} ours {r['tb_s']['ours_write_kv']:.2f} TB/s torch "
                    f"{r['tb_s']['torch_index_copy']:.2f} TB/s correct={r['correct']}",
                    flush=True,
                )
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                r = {
                    "case": f"write_kv {tokens}x{heads}",
                    "error": str(e)[:300],
                    "ms": {},
                    "tb_s": {},
                    "ours_vs_torch_index_copy": float("nan"),
                    "ours_frac_of_copy_ceiling": float("nan"),
                }
            result["write_kv"].append(r)
            save()
        for layers, pairs in [(32, 256)] if not SMOKE else [(2, 4)]:
            if budget.left() < 10:
                break
            try:
                r = measure_copy_blocks(layers, pairs, 8, ceil)
                print(
                    f"{r['case']:28s} ours {r['tb_s']['ours_copy_blocks']:.2f} TB/s torch "
                    f"{r['tb_s']['torch_loop_index_copy']:.2f} TB/s correct={r['correct']}",
                    flush=True,
                )
                result["copy_blocks"].append(r)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
            save()
    save()
    print("\n" + open(md_path).read())


if __name__ == "__main__":
    main()
