"""How the benchmark times things: do_bench medians over CUDA-graph replays, host time per call, the budget, the
environment record and the copy ceiling."""

from __future__ import annotations

import datetime as _dt
import functools
import platform
import subprocess
import sys
import time

import torch
import triton
from triton.testing import do_bench

from kernels.bench.run import REP_MS, RUN, WARMUP_MS


def frees_device_memory(fn):
    """Run a measurement, then hand its freed tensors back to the device (``torch.cuda.empty_cache``)."""

    @functools.wraps(fn)
    def measured(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.empty_cache()

    return measured


def bench(fn, rep=REP_MS):
    """Median time (ms) of ``fn`` by ``triton.testing.do_bench`` (L2 cleared before each run)."""
    if RUN.smoke:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return do_bench(fn, warmup=WARMUP_MS, rep=rep, return_mode="median")


def graph(fn):
    """Capture ``fn`` in a CUDA graph (after two warm-up calls on a side stream); return its replay."""
    if RUN.smoke:
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


def bench_graph(fn, rep=REP_MS):
    """Median time of a CUDA-graph replay of ``fn`` (L2 cleared before each replay by do_bench)."""
    return bench(graph(fn), rep=rep)


def bench_graph_or_eager(fn, rec, label, rep=REP_MS):
    """Graph-replay time if ``fn`` can be captured, else eager (noted in ``rec['timing']``)."""
    try:
        t = bench_graph(fn, rep=rep)
        rec.setdefault("timing", {})[label] = "cuda_graph"
        return t
    except Exception as e:  # noqa: BLE001
        torch.cuda.synchronize() if not RUN.smoke else None
        rec.setdefault("timing", {})[label] = f"eager (graph capture failed: {type(e).__name__})"
        return bench(fn, rep=rep)


def cpu_us(fn, n=50):
    """Host time per eager call (launch overhead), with the device left to catch up afterwards."""
    fn()
    if not RUN.smoke:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n * 1e6
    if not RUN.smoke:
        torch.cuda.synchronize()
    return dt


class Budget:
    """Wall-clock budget of a run: cases are not started once it is nearly spent."""

    def __init__(self, seconds: float):
        self.t0 = time.time()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.t0)


def env_info(argv) -> dict:
    """Versions, device and command of this run (``bench.json``'s ``env``)."""
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
    """A 1 GiB device-to-device copy: the bandwidth ceiling (bytes read + bytes written)."""
    n = (1 << 20) if RUN.smoke else (1 << 30)  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=RUN.dev)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), rep=200)
    t2 = bench(lambda: dst.copy_(src), rep=200)
    return {
        "bytes_moved": 2 * n,
        "ms": t,
        "ms_repeat": t2,
        "tb_s": 2 * n / (t * 1e-3) / 1e12,
        "tb_s_repeat": 2 * n / (t2 * 1e-3) / 1e12,
    }
