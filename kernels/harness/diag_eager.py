"""Diagnosis (GPU): why eager iterations with prefill take longer in a replay than calibration predicts.

`python -m kernels.harness.diag_eager TRACE [--first N --scale X --kv-memory 3GiB --seconds 90] --out DIR`

1. A GPU replay of a short slice in which every eager iteration (one with prefill tokens) is executed once more
   right after itself, back to back (the way calibration times a grid point). In check mode the K/V written are a
   deterministic function of each token, so the repeat rewrites the same values. Per eager iteration it records the
   batch's make-up, the first and repeated execution's wall, CUDA-event and issue times.
2. Calibration-style timings of mixed batches (one prefill of P tokens + D decodes at context C) over C, to see
   whether the decode context costs more in an eager iteration than in a graph replay.
3. A torch.profiler table of one replay-like eager iteration (host time per operator).

Writes DIR/diag_eager.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from kernels.harness import executor as ex_mod
from kernels.harness.calibrate import SyntheticState, _decode_batch, _prefill_batch
from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay, warm_up
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions
from sim.serving.schedulers.vllm_v0 import Batch
from sim.traces.readers import read_trace
from sim.traces.tools import scale_trace, slice_trace
from sim.units import parse_size


def _time(executor, batch, repeats=3):
    walls, gpus, issues = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = executor.execute(batch)
        walls.append(time.perf_counter() - t0 - r.capture_s)
        gpus.append(r.gpu_s or 0.0)
        issues.append(r.issue_s or 0.0)
    return float(np.median(walls)), float(np.median(gpus)), float(np.median(issues))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--first", type=int, default=150)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--kv-memory", default="24GiB")
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--allocator", default="paged")
    ap.add_argument("--out", default="diag")
    ap.add_argument("--device", default="cuda")  # cpu: a smoke test of this script (TRITON_INTERPRET=1)
    ap.add_argument("--layers", type=int, default=None)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    trace = scale_trace(slice_trace(read_trace(a.trace), first=a.first), factor=a.scale)
    options = ReplayOptions(
        resolve_model("llama-2-7b"), resolve_gpu("h100-80gb"), a.allocator, kv_memory=parse_size(a.kv_memory)
    )
    run = GpuRun.build(options, HarnessOptions(layers=a.layers, device=a.device, time_limit_s=a.seconds))
    print(f"warm-up {warm_up(run):.1f} s", flush=True)
    out: dict = {}

    # 2. mixed batches, calibration style
    state = SyntheticState(run)
    mixed = []
    for p, d, c in [
        (128, 0, 0),
        (128, 8, 512),
        (128, 8, 1024),
        (128, 8, 2048),
        (128, 8, 4000),
        (128, 32, 512),
        (128, 32, 2048),
        (512, 8, 512),
        (512, 8, 2048),
        (0, 8, 512),
        (0, 8, 2048),
    ]:
        batch = Batch()
        ok = (p == 0 or _prefill_batch(state, batch, 1, p, 0)) and (d == 0 or _decode_batch(state, batch, d, c))
        if ok:
            row = {"prefill": p, "decode": d, "context": c}
            eager = ex_mod.Executor(run.model, run.pool, state.alloc, run.source)
            for name, ex in (("graph", state.executor), ("eager", eager)):
                ex.execute(batch)
                w, g, i = _time(ex, batch, 5)
                g, i = g or 0.0, i or 0.0
                row[name] = {"wall_ms": w * 1e3, "gpu_ms": g * 1e3, "issue_ms": i * 1e3}
                print(
                    f"mixed P={p} D={d} C={c} {name}: wall {w * 1e3:.2f} gpu {g * 1e3:.2f} issue {i * 1e3:.2f} ms",
                    flush=True,
                )
            mixed.append(row)
        state.release(batch)
    out["mixed"] = mixed

    # 1. the replay, each eager iteration repeated
    rows = []
    orig = ex_mod.Executor.execute
    profiled = {"done": False}

    def execute(self, batch, check=False):
        t0 = time.perf_counter()
        r = orig(self, batch, check)
        first_wall = time.perf_counter() - t0 - r.capture_s
        if r.static or not batch.prefill:
            return r
        t1 = time.perf_counter()
        r2 = orig(self, batch, False)
        second_wall = time.perf_counter() - t1
        nd = sum(len(s.branches) for s in batch.decode)
        rows.append(
            {
                "prefill_tokens": int(batch.num_prefill_tokens),
                "prefill_seqs": len(batch.prefill),
                "prefill_context": int(batch.prefill_context_tokens),
                "decode": nd,
                "decode_context": int(batch.decode_context_tokens),
                "first": [first_wall, r.gpu_s or 0.0, r.issue_s or 0.0],
                "repeat": [second_wall, r2.gpu_s or 0.0, r2.issue_s or 0.0],
            }
        )
        if not profiled["done"] and len(rows) >= 20 and nd >= 4:
            profiled["done"] = True
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                orig(self, batch, False)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
            with open(os.path.join(a.out, "profile_eager.txt"), "w") as f:
                f.write(table)
            print(table, flush=True)
        # the repeat's time is not part of the replay's clock: push the clock's origin forward by it
        r.capture_s += time.perf_counter() - t1
        return r

    ex_mod.Executor.execute = execute
    try:
        res = gpu_replay(trace, run)
    finally:
        ex_mod.Executor.execute = orig
    out["rows"] = rows
    f = np.array([r["first"][0] for r in rows])
    s = np.array([r["repeat"][0] for r in rows])
    fi = np.array([r["first"][2] for r in rows])
    si = np.array([r["repeat"][2] for r in rows])
    pt = np.array([r["prefill_tokens"] for r in rows])
    summary = {
        "eager_iterations": len(rows),
        "first_wall_ms_median": float(np.median(f) * 1e3),
        "repeat_wall_ms_median": float(np.median(s) * 1e3),
        "first_issue_ms_median": float(np.median(fi) * 1e3),
        "repeat_issue_ms_median": float(np.median(si) * 1e3),
        "first_over_repeat_median": float(np.median(f / s)),
        "static_iterations": int(res.static.sum()) if res.static is not None else None,
        "iterations": int(len(res.host_s)),
    }
    small = pt < 512
    if small.any():
        summary["small_prefill"] = {
            "n": int(small.sum()),
            "first_ms": float(np.median(f[small]) * 1e3),
            "repeat_ms": float(np.median(s[small]) * 1e3),
        }
    st = res.static if res.static is not None else np.zeros(0, bool)
    if st.any():
        summary["static_host_ms_median"] = float(np.median(res.host_s[st]) * 1e3)
        summary["static_issue_ms_median"] = float(np.nanmedian(res.issue_s[st]) * 1e3)
    out["summary"] = summary
    print(json.dumps(summary, indent=1), flush=True)
    with open(os.path.join(a.out, "diag_eager.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
