"""GPU benchmark of the kernels against their baselines, in one process, on the same data.

    python -m kernels.bench --out DIR [--sweep] [--budget-s 360] [--quick] [--flex]
    python -m kernels.bench --out DIR --only flex      # FlexAttention (paged KV) subset only
    python -m kernels.bench sliding-window --out DIR   # sliding-window decode and prefill (sliding_window.py)

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
import json
import os
import sys
import time
import traceback

import torch

from kernels.bench.cache import measure_copy_blocks, measure_write_kv
from kernels.bench.cases import (
    FLEX_CASES,
    FLEX_MIXED,
    FLEX_SMOKE,
    FLEX_SMOKE_MIXED,
    copy_blocks_cases,
    decode_cases,
    prefill_cases,
    write_kv_cases,
)
from kernels.bench.decode import decode_bytes, decode_sweep_configs, measure_decode
from kernels.bench.flex import flex_available
from kernels.bench.prefill import measure_prefill
from kernels.bench.report import evaluate_targets, write_markdown
from kernels.bench.run import GB, RUN
from kernels.bench.timing import Budget, copy_ceiling, env_info


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sliding-window":  # its own cases, options and output files
        from kernels.bench import sliding_window

        return sliding_window.main(argv[1:])
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
    if args.cpu_smoke:
        RUN.use_cpu_smoke()
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
        uni = ", ".join(f"{lay} b{b} ctx{L}" for lay, b, L in sorted(FLEX_SMOKE if RUN.smoke else FLEX_CASES))
        mix = ", ".join(sorted(FLEX_SMOKE_MIXED if RUN.smoke else FLEX_MIXED))
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

    cases = decode_cases(args.quick, skip, flex_only, args.flex_cases == "all")
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
        pcases = prefill_cases()
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
        for tokens, heads in write_kv_cases():
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
        for layers, pairs in copy_blocks_cases():
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
