"""Markdown tables of validation results: `python -m kernels.harness.summarize DIR` (every validation.json and
headline.json under DIR). Needs no torch."""

from __future__ import annotations

import glob
import json
import os
import sys

from sim.allocators.base import MEMORY_CATEGORIES


def _pct(x):
    return "-" if x is None else f"{100 * x:+.1f}%"


def _num(x, digits=4):
    return "-" if x is None else f"{x:.{digits}g}"


def _mark(ok):
    return "" if ok is None else (" ✓" if ok else " ✗")


def results_table(root: str) -> str:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", "validation.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            rows.append((os.path.relpath(os.path.dirname(path), root), json.load(f)))
    head = (
        "| run | allocator | batch mean pred / meas | KV categories, worst | out tok/s pred / meas | TTFT p50 | "
        "TTFT p99 | TPOT p50 | TPOT p99 | preemptions pred / meas | attention max abs (rel) |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows:
        m, t = r["metrics"], r["targets"]
        worst = max(MEMORY_CATEGORIES, key=lambda c: abs(m[f"kv_{c}"]["abs_error_pp"]))
        pp = m[f"kv_{worst}"]["abs_error_pp"]
        c = r.get("attention_check") or {}
        out.append(
            f"| {name} | {r['allocator']} | {_num(m['batch_size_mean']['predicted'])} / "
            f"{_num(m['batch_size_mean']['measured'])} ({_pct(m['batch_size_mean']['rel_error'])}"
            f"{_mark(t['batch_size_mean']['met'])}) | {worst.replace('_', ' ')} {pp:+.2f} pp"
            f"{_mark(all(t[f'kv_{k}']['met'] for k in MEMORY_CATEGORIES))} | "
            f"{_num(m['output_tokens_per_s']['predicted'])} / {_num(m['output_tokens_per_s']['measured'])} "
            f"({_pct(m['output_tokens_per_s']['rel_error'])}{_mark(t['output_tokens_per_s']['met'])}) | "
            + " | ".join(
                f"{_num(m[k]['predicted'], 3)} / {_num(m[k]['measured'], 3)} s ({_pct(m[k]['rel_error'])}"
                f"{_mark(t[k]['met'])})"
                for k in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")
            )
            + f" | {_num(m['preemptions']['predicted'])} / {_num(m['preemptions']['measured'])} | "
            f"{_num(c.get('max_abs_error'), 3)} ({_num(c.get('max_rel_error'), 3)}){_mark(c.get('within_tolerance'))} |"
        )
    return "\n".join(out)


def headline_table(root: str) -> str:
    out = ["| run | ratio | throughput pred / meas (error) | batch mean pred / meas (error) |", "|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(root, "**", "headline.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            h = json.load(f)
        name = os.path.relpath(os.path.dirname(path), root)
        for pair, e in h["ratios"].items():
            tp, bs = e["output_tokens_per_s"], e["batch_size_mean"]
            out.append(
                f"| {name} | {pair} | {_num(tp['predicted'], 3)} / {_num(tp['measured'], 3)} "
                f"({_pct(tp['rel_error'])}{_mark(tp['met'])}) | {_num(bs['predicted'], 3)} / "
                f"{_num(bs['measured'], 3)} ({_pct(bs['rel_error'])}{_mark(bs['met'])}) |"
            )
    return "\n".join(out)


def memory_table(root: str) -> str:
    gib = 2**30
    out = [
        "| run | allocator | peak allocated | peak reserved | weights (sim) | KV pool (sim) | activations measured "
        "(sim reserve) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(glob.glob(os.path.join(root, "**", "validation.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        mem = r["memory"]
        if "peak_allocated" not in mem:
            continue
        name = os.path.relpath(os.path.dirname(path), root)
        out.append(
            f"| {name} | {r['allocator']} | {mem['peak_allocated'] / gib:.2f} GiB | "
            f"{mem['peak_reserved'] / gib:.2f} GiB | {mem['harness_weights'] / gib:.2f} "
            f"({(mem['sim_weights'] or 0) / gib:.2f}) GiB | {mem['harness_pool'] / gib:.2f} "
            f"({mem['sim_kv_per_layer_pool'] / gib:.2f}) GiB | {mem['activations_peak_measured'] / gib:.2f} "
            f"({mem['sim_activations'] / gib:.2f}) GiB |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = args[0] if args else os.path.join("reports", "validation")
    print(results_table(root))
    print()
    print(headline_table(root))
    print()
    print(memory_table(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
