"""The sliding-window benchmark's targets (met or missed) and its markdown report, from the JSON record that
`kernels.bench.sliding_window` writes.

fp8-KV cases (``kv_dtype`` float8_e4m3fn) are judged like the others, with their window K/V counted in fp8 bytes (the
bytes ours reads): the 1 GB threshold and the bytes target use them. Their alternatives read bf16 copies (SDPA and
FlexAttention take no fp8 K/V), so the speed target compares ours on fp8 with the fastest baseline on bf16."""

from __future__ import annotations

from kernels.bench.report import cell
from kernels.bench.run import GB, RUN

SPEED_TARGET = 0.97  # our time vs the fastest alternative's (its time / ours)
BYTES_TARGET = 1.05  # K/V bytes moved / the window's K/V bytes
TARGET_MIN_BYTES = 1 * GB  # the targets apply from this much window K/V on


def evaluate_targets(result) -> list[dict]:
    """Per case of at least ``TARGET_MIN_BYTES`` of window K/V (in the cache's dtype: fp8 bytes for fp8 cases): speed
    vs the fastest alternative, K/V bytes moved vs the window's; and on every case, no NaN (the freed blocks are NaN)
    and a checked output."""
    tg = []

    def add(name, case, value, threshold, ok):
        tg.append({"target": name, "case": case, "value": value, "threshold": threshold, "met": bool(ok)})

    for section in ("decode", "prefill"):
        for r in result.get(section, []):
            if "ms" not in r:
                continue
            big = r["bytes_model"]["window_kv"] >= TARGET_MIN_BYTES or RUN.smoke
            if big and "ours_speed_vs_fastest_alternative" in r:
                v = r["ours_speed_vs_fastest_alternative"]
                add(
                    f"{section}, >= 1 GB window K/V: speed vs fastest alternative >= {SPEED_TARGET}",
                    r["case"],
                    v,
                    SPEED_TARGET,
                    v >= SPEED_TARGET,
                )
            if big:
                v = r["kv_bytes_moved_vs_window"]
                add(
                    f"{section}, >= 1 GB window K/V: K/V bytes moved / window K/V <= {BYTES_TARGET}",
                    r["case"],
                    v,
                    BYTES_TARGET,
                    v <= BYTES_TARGET,
                )
            add(f"{section}: no NaN with the freed blocks NaN", r["case"], float(r["ours_nan"]), 0, not r["ours_nan"])
            if "bytes_counted_interpreter" in r:
                c, m = r["bytes_counted_interpreter"], r["bytes_model"]
                same = c["kv_rows"] == m["kv_rows"] and c["block_table"] == m["block_table"]
                if "kv_issued" in m:
                    same = same and c["kv_issued"] == m["kv_issued"]
                add(f"{section}: byte model == interpreter count", r["case"], float(same), 1, same)
    return tg


def write_markdown(result, path):
    L = ["# Sliding-window attention benchmark\n"]
    env = result["env"]
    L.append(
        f"`{env.get('command')}` on {env.get('device', 'CPU (smoke)')}, torch {env['torch']}, triton {env['triton']}"
    )
    ceil = result.get("copy_ceiling", {}).get("tb_s")
    L.append(
        f"\nCopy ceiling {cell(ceil)} TB/s. Times in ms (median of CUDA-graph replays); GB/TB/s count the window's K/V."
    )
    if RUN.smoke:
        L.append(
            "\nCPU smoke run (Triton interpreter, tiny shapes): the times mean nothing; the byte counts and checks do."
        )
    for section in ("decode", "prefill"):
        rows = result.get(section, [])
        if not rows:
            continue
        L.append(f"\n## {section.capitalize()}\n")
        L.append(
            "| case | window K/V GB | ours ms | ours % copy | ours full-attn ms | fastest alternative | its ms | "
            "ours speed vs it | vs best SDPA | vs flex | K/V bytes moved / window |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "ms" not in r:
                L.append(f"| {r['case']} | skipped: {r.get('skipped') or r.get('error')} |" + " |" * 9)
                continue
            m = r["ms"]
            best = r.get("fastest_alternative")
            L.append(
                f"| {r['case']} | {cell(r['window_kv_gb'])} | {cell(m['ours'], 4)} | "
                f"{100 * r['frac_of_copy']['ours']:.1f}% | "
                f"{cell(m.get('ours_full_attention', m.get('ours_newkv')), 4)} | {best} | {cell(m.get(best), 4)} | "
                f"{cell(r.get('ours_speed_vs_fastest_alternative'))} | {cell(r.get('ours_speed_vs_fastest_sdpa'))} | "
                f"{cell(r.get('ours_speed_vs_flex'))} | {cell(r['kv_bytes_moved_vs_window'], 4)} |"
            )
        L.append("")
        for r in rows:
            if "ms" in r:
                items = ", ".join(f"{k} {cell(v, 4)}" for k, v in r["ms"].items())
                errs = "; ".join(f"{k}: {v}" for k, v in r.items() if k.endswith("_error"))
                L.append(f"- {r['case']}: {items}" + (f" (errors: {errs})" if errs else ""))
        if section == "decode":
            L.append("\n(decode: 'ours full-attn' is the same kernel without the window, over the whole context)")
        else:
            L.append("\n(prefill: the 'ours full-attn' column holds the new-K/V path with the window)")
        if any(r.get("kv_dtype") == "float8_e4m3fn" for r in rows):
            base = str(RUN.dtype).replace("torch.", "")
            L.append(
                "\n(fp8 cases: ours reads float8_e4m3fn K/V caches with per-tensor scales, q and the output in "
                f"{base}; SDPA and FlexAttention have no fp8 K/V input and read {base} copies of the dequantized K/V, "
                "twice the bytes. 'window K/V GB', the 1 GB threshold and 'K/V bytes moved / window' count fp8 bytes.)"
            )
    L.append("\n## Targets\n")
    L.append("| target | case | value | threshold | met |")
    L.append("|---|---|---|---|---|")
    for t in result.get("targets", []):
        L.append(
            f"| {t['target']} | {t['case']} | {cell(t['value'])} | {t['threshold']} | {'yes' if t['met'] else 'NO'} |"
        )
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")
