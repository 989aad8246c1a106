"""A/B of decode iterations: CUDA-graph replay against the eager path, same batches, same executor (a benchmark, not a
test). Prints and writes JSON: per (batch size, context) the median wall and CUDA-event time of each path, and the
largest difference between the two paths' attention outputs at the check layers.

    python -m kernels.harness.ab_graphs --out ab.json [--model llama-2-7b] [--repeats 30]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np
import torch

from kernels.harness.calibrate import SyntheticState, synthetic_batches
from kernels.harness.replay import GpuRun, HarnessOptions
from sim.hardware.gpus import GPUS
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions
from sim.units import parse_size


def _time(ex, batch, repeats: int) -> tuple[float, float]:
    ex.execute(batch)  # warm-up (captures the graph on first use)
    walls, gpus = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = ex.execute(batch)
        walls.append(time.perf_counter() - t0 - r.capture_s)
        gpus.append(r.gpu_s if r.gpu_s is not None else float("nan"))
    return float(np.median(walls)), float(np.median(gpus))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--kv-memory", default="16GiB")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke run in the interpreter
    ap.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1,4,16,32,64,128,256:512,2048", help="batch sizes:contexts")
    args = ap.parse_args(argv)
    opts = ReplayOptions(
        model=resolve_model(args.model), gpu=GPUS["h100-80gb"], allocator="paged", kv_memory=parse_size(args.kv_memory)
    )
    run = GpuRun.build(opts, HarnessOptions(device=args.device, dtype=args.dtype))
    runner = run.decode_runner
    state = SyntheticState(run)
    ex = state.executor
    rows = []
    gc.disable()
    sizes, contexts = ([int(x) for x in part.split(",")] for part in args.sizes.split(":"))
    for b in sizes:
        for c in contexts:
            for batch in synthetic_batches(state, "decode", b, c):
                ex.runner = runner
                gw, gg = _time(ex, batch, args.repeats)
                ex.runner = None
                ew, eg = _time(ex, batch, args.repeats)
                ex.runner = runner  # the same rows checked in both paths: same rng state
                ex.rng = np.random.default_rng(0)
                a = ex.execute(batch, check=True).capture
                ex.runner = None
                ex.rng = np.random.default_rng(0)
                e = ex.execute(batch, check=True).capture
                diff = max(float((a.out[k].float() - e.out[k].float()).abs().max()) for k in a.layers)
                rows.append(
                    {
                        "batch": b,
                        "context": c,
                        "graph_wall_ms": 1e3 * gw,
                        "graph_gpu_ms": 1e3 * gg,
                        "eager_wall_ms": 1e3 * ew,
                        "eager_gpu_ms": 1e3 * eg,
                        "max_abs_attn_diff": diff,
                    }
                )
                print(
                    f"decode {b:>4} x {c:>5}: static {1e3 * gw:7.2f} ms wall {1e3 * gg:7.2f} ms GPU | eager "
                    f"{1e3 * ew:7.2f} ms wall {1e3 * eg:7.2f} ms GPU | x{ew / gw:4.2f} | attn diff {diff:.2g}",
                    flush=True,
                )
                state.release(batch)
    gc.enable()
    res = {
        "rows": rows,
        "graphs_captured": len(runner.graphs),
        "capture_s_total": runner.capture_s_total,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    print(f"{len(runner.graphs)} graphs captured in {runner.capture_s_total:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
