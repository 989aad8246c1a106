"""The run's targets (met or missed) and ``bench.md``."""

from __future__ import annotations

from kernels.bench.run import GB


def evaluate_targets(result) -> list[dict]:
    """Every target of ``reports/kernels/README.md``, per case: value, threshold, met or missed."""
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


def cell(x, nd=3) -> str:
    """A table cell: '-' for None, a string as it is, a number with `nd` decimals."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}"


def _splits_cell(r):
    """The default's split count; "u" marks a grid whose near-uniform lengths take the hint's partition on the
    device."""
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
    """``bench.md``: the tables and the targets."""
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
        f"- copy ceiling (1 GiB device-to-device copy, read + write): {cell(c.get('tb_s'), 2)} TB/s "
        f"(repeat {cell(c.get('tb_s_repeat'), 2)})"
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
                f"| {r['case']} | {cell(r['kv_gb'], 2)} | skipped: {r.get('skipped', r.get('error', ''))} |" + " |" * 10
            )
            continue
        m, fr = r["ms"], r["frac_of_copy"]
        best = r.get("fastest_sdpa")
        L.append(
            f"| {r['case']} | {cell(r['kv_gb'], 2)} | {_splits_cell(r)} | {cell(m['ours_scattered'], 4)} | "
            f"{cell(m['ours_inorder'], 4)} | {100 * r['paging_overhead']:+.1f}% | {cell(m.get('sdpa_flash'), 4)} | "
            f"{cell(m.get('sdpa_efficient'), 4)} | {cell(m.get('sdpa_cudnn'), 4)} | "
            f"{cell(r.get('ours_speed_vs_fastest_sdpa'), 3)} | {cell(r['tb_s']['ours_scattered'], 2)} | "
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
            hint = "bal" if r.get("hint_balanced") else r.get("hint_splits", "-")
            L.append(
                f"| {r['case']} | {_splits_cell(r)} / {hint} | "
                f"{'yes' if r.get('default_fused') else 'no'} | {cell(m['ours_scattered'], 4)} | "
                f"{cell(m.get('ours_fused'), 4)} | "
                f"{cell(m.get('ours_two_kernel'), 4)} | {cell(r.get('fused_speedup_vs_two_kernel'), 3)} | "
                f"{cell(m.get('ours_hint'), 4)} | {cell(m.get('ours_balanced'), 4)} | "
                f"{cell(m.get(sd) if sd else None, 4)} | {'-' if bfr is None else f'{100 * bfr:.1f}%'} | "
                f"{cell(r.get('ours_speed_vs_fastest_sdpa'), 3)} / "
                f"{cell(r.get('ours_fused_speed_vs_fastest_sdpa'), 3)} / "
                f"{cell(r.get('ours_two_kernel_speed_vs_fastest_sdpa'), 3)} / "
                f"{cell(r.get('ours_hint_speed_vs_fastest_sdpa'), 3)} / "
                f"{cell(r.get('ours_balanced_speed_vs_fastest_sdpa'), 3)} |"
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
                    f"| {r['case']} | {cell(r.get('kv_gb'), 2)} | {cell(m.get('ours_scattered'), 4)} | "
                    f"error: {r.get('flex_error', '')} |" + " |" * 7
                )
                continue
            L.append(
                f"| {r['case']} | {cell(r['kv_gb'], 2)} | {cell(m['ours_scattered'], 4)} | "
                f"{cell(m['flex_paged'], 4)} | {cell(r.get('ours_speed_vs_flex'), 2)} | "
                f"{cell(m.get(sd) if sd else None, 4)} | {100 * r['frac_of_copy']['flex_paged']:.1f}% | "
                f"{cell(r.get('ours_max_abs_err_vs_ref'), 4)} | {cell(r.get('flex_max_abs_err_vs_ref'), 4)} | "
                f"{cell(r.get('flex_first_call_s'), 1)} | {r.get('timing', {}).get('flex_paged', '-')} |"
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
                f"| {r['case']} | {cell(m['ours_paged'], 4)} | {cell(m.get('ours_newkv'), 4)} | "
                f"{cell(m.get('sdpa_flash'), 4)} | "
                f"{cell(m.get('sdpa_efficient'), 4)} | {cell(m.get('sdpa_cudnn'), 4)} | {cell(tf['ours_paged'], 1)} | "
                f"{cell(tf.get('ours_newkv'), 1)} | "
                f"{cell(tf.get(best) if best else None, 1)} | {cell(r.get('ours_speed_vs_fastest_sdpa'), 3)} / "
                f"{cell(r.get('ours_newkv_speed_vs_fastest_sdpa'), 3)} |"
            )
        for r in result["prefill"]:
            if "paged_kernel" in r:
                L.append(
                    f"\n{r['case']}: the paged column ran {r['paged_kernel']}; the Triton paged kernel beside "
                    f"it: {cell(r.get('ms', {}).get('ours_paged_triton'), 4)} ms, "
                    f"{cell(r.get('ours_paged_triton_speed_vs_fastest_sdpa'), 3)}x of the best SDPA"
                )
            if "newkv_kernel" in r:
                L.append(
                    f"\n{r['case']}: the new-K/V column ran {r['newkv_kernel']}; the Triton new-K/V kernel "
                    f"beside it: {cell(r.get('ms', {}).get('ours_newkv_triton'), 4)} ms, "
                    f"{cell(r.get('ours_newkv_triton_speed_vs_fastest_sdpa'), 3)}x of the best SDPA"
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
                f"| {r['case']} (baseline: torch index_copy_) | {cell(m['ours_write_kv'], 4)} | "
                f"{cell(m['torch_index_copy'], 4)} | {cell(t['ours_write_kv'], 2)} | {cell(t['torch_index_copy'], 2)} |"
                f" {cell(r['ours_vs_torch_index_copy'], 2)} | {100 * r['ours_frac_of_copy_ceiling']:.1f}% |"
            )
        for r in result.get("copy_blocks", []):
            m, t = r["ms"], r["tb_s"]
            L.append(
                f"| {r['case']} (baseline: per-cache index_copy_ loop) | {cell(m['ours_copy_blocks'], 4)} | "
                f"{cell(m['torch_loop_index_copy'], 4)} | {cell(t['ours_copy_blocks'], 2)} | "
                f"{cell(t['torch_loop_index_copy'], 2)} | {cell(r['ours_vs_torch'], 2)} | "
                f"{100 * r['ours_frac_of_copy_ceiling']:.1f}% |"
            )
    L.append("\n## Targets\n")
    L.append("| target | case | value | threshold | met |")
    L.append("|---|---|---|---|---|")
    for t in result.get("targets", []):
        L.append(
            f"| {t['target']} | {t['case']} | {cell(t['value'])} | {t['threshold']} | {'yes' if t['met'] else 'NO'} |"
        )
    sweeps = [r for r in result["decode"] + result.get("prefill", []) if r.get("sweep_ms")]
    if sweeps:
        L.append("\n## Config sweep (ms, median)\n")
        for r in sweeps:
            base = r["ms"].get("ours_scattered", r["ms"].get("ours_paged"))
            items = ", ".join(f"{k}: {cell(v, 4) if not isinstance(v, str) else v}" for k, v in r["sweep_ms"].items())
            L.append(f"- {r['case']} (default {cell(base, 4)}): {items}")
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")
