"""Diagnosis (no GPU): can the profile's additive formula learn the cost of spread lengths from synthetic points?

Fits the formula of `sim.cost.profile` to a call's calibration samples plus the uniform and synthetic spread batches
of its `diag_calib` run (never the batches picked from replays), with and without one further non-negative feature
of the decode lengths, and sets each fit beside the call's own replay (its decode-only iterations re-created from the
measured clock by `kernels.harness.residuals.rebuild`):

    python -m kernels.harness.diag_fit_spread reports/validation/h100-run9-diag/call1 \
        traces/sharegpt-2k.csv --first 200 --scale 3 --kv-memory 3GiB

Features: `longest` (the longest decode context, tokens) and `makespan` (max(total context / W, min(longest,
2,048)): a lower bound of the attention's critical path when W sequences' programs run at once; W = 8.25 is the
H100's 264 resident decode programs over 32 KV heads). Run 9's diagnosis in reports/validation/README.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from kernels.harness.residuals import rebuild
from sim.cost.profile import _design, batch_features, default_knots, nnls
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions
from sim.traces.readers import read_trace
from sim.traces.tools import scale_trace, slice_trace
from sim.units import parse_size

PROGRAMS_IN_FLIGHT = 264 / 32  # sequences whose (sequence, KV head) programs fit the H100 at once
PARTITION = 2048  # the decode kernel's longest split-KV partition, tokens


def extra(row: dict, kind: str) -> float:
    if kind == "none" or row["decode_seqs"] == 0:
        return 0.0
    if kind == "longest":
        return float(row["longest"])
    return max(row["decode_context"] / PROGRAMS_IN_FLIGHT, min(row["longest"], PARTITION))


def design(rows: list[dict], kind: str, knots: list[int]) -> np.ndarray:
    """The profile's design matrix (`sim.cost.profile._design`), with the extra feature as a last column."""
    base = _design(rows, knots)
    if kind == "none":
        return base
    return np.column_stack([base, np.array([extra(r, kind) for r in rows])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("call_dir", help="a run 9 call folder: profile-*.json, diag/diag_calib.json, sharegpt/")
    ap.add_argument("trace")
    ap.add_argument("--first", type=int, default=None)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--kv-memory", required=True)
    ap.add_argument("--replay", default="sharegpt")
    a = ap.parse_args()
    profile = next(f for f in os.listdir(a.call_dir) if f.startswith("profile-") and f.endswith(".json"))
    with open(os.path.join(a.call_dir, profile)) as f:
        grid = json.load(f)["samples"]
    for s in grid:  # calibration's decode points have uniform lengths; its mixed points decode at 512
        s["longest"] = s["point"][1] if s["kind"] == "decode" else 512 if s["kind"] == "mixed" else 0
    with open(os.path.join(a.call_dir, "diag", "diag_calib.json")) as f:
        diag = json.load(f)["rows"]
    synthetic = [
        {
            "tokens": r["n"],
            "prefill_pairs": 0,
            "decode_context": r["total"],
            "decode_seqs": r["n"],
            "prefill_seqs": 0,
            "has_prefill": 0,
            "has_decode": 1,
            "longest": r["max"],
            "time_s": r["evolve"]["wall_s"],
        }
        for r in diag
        if r["evolve"]["wall_s"] and r["name"].startswith(("uniform", "synthetic", "one-long"))
    ]
    trace = scale_trace(slice_trace(read_trace(a.trace), first=a.first), factor=a.scale)
    options = ReplayOptions(
        resolve_model("llama-2-7b"), resolve_gpu("h100-80gb"), "paged", kv_memory=parse_size(a.kv_memory)
    )
    replay = []
    for batch, lens, _, tm in rebuild(os.path.join(a.call_dir, a.replay), trace, options):
        if lens and not batch.num_prefill_tokens:
            replay.append({**batch_features(batch), "longest": max(lens), "exe": float(tm["execute_s"])})
    exe = np.array([r["exe"] for r in replay])
    print(f"{len(replay)} decode-only replay iterations; measured / predicted, summed:")
    for train_name, train in (("grid", grid), ("grid + synthetic spread", grid + synthetic)):
        knots = default_knots(max(int(s["tokens"]) for s in train))
        y = np.array([s["time_s"] for s in train])
        for kind in ("none", "longest", "makespan"):
            a_ = design(train, kind, knots)
            x = nnls(a_ / y[:, None], np.ones_like(y))
            pred = design(replay, kind, knots) @ x
            coef = f", feature coefficient {x[-1] * 1e6:.3f} us/token" if kind != "none" else ""
            print(f"  fitted on {train_name:<24} feature {kind:<9} {exe.sum() / pred.sum():.4f}{coef}")


if __name__ == "__main__":
    main()
