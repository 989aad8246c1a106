"""The sliding-window benchmark's alternatives (``kernels.bench.sliding_window``): every torch SDPA backend, with
K/V expanded to the q heads where a backend refuses ``enable_gqa``, and FlexAttention with a block mask; times,
outputs and errors go into the case's record."""

from __future__ import annotations

import time
import traceback
import warnings

import torch

from kernels.bench.flex import flex_compiled
from kernels.bench.run import MAX_BYTES, RUN
from kernels.bench.sdpa import run_sdpa, sdpa_backends
from kernels.bench.timing import bench_graph_or_eager


def _baselines():
    """(name, backend) of the SDPA backends; the CPU smoke run adds the math backend (the others need CUDA)."""
    backends = sdpa_backends()
    if RUN.smoke:
        from torch.nn.attention import SDPBackend

        backends = backends + [("math", SDPBackend.MATH)]
    return backends


def _flex():
    """``flex_attention`` compiled once (``kernels.bench.flex``), or eager in the CPU smoke run (checks the mask)."""
    if RUN.smoke:
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention
    return flex_compiled()


def time_sdpa(rec, times, label, q4, k4, v4, mask, gqa, outs, **kw):
    """Every SDPA backend on ``q4, k4, v4`` (``enable_gqa`` where the heads differ). A backend that refuses
    ``enable_gqa`` is tried again on K/V expanded to the q heads (``..._expanded``: it then reads the expanded
    copy), where that fits in ``MAX_BYTES``. Errors are recorded."""
    expanded = {}

    def attempt(name, backend, k, v, use_gqa):
        outs[name] = run_sdpa(backend, q4, k, v, mask, gqa=use_gqa, **kw)
        times[name] = bench_graph_or_eager(lambda: run_sdpa(backend, q4, k, v, mask, gqa=use_gqa, **kw), rec, name)

    for bname, backend in _baselines():
        name = f"sdpa_{label}_{bname}"
        try:
            attempt(name, backend, k4, v4, gqa)
            continue
        except Exception as e:  # noqa: BLE001
            rec[f"{name}_error"] = _err(e)
        group = q4.shape[1] // k4.shape[1]
        if not gqa or 2 * k4.numel() * group * k4.element_size() > MAX_BYTES:
            continue
        try:
            if not expanded:
                expanded["k"] = k4.repeat_interleave(group, dim=1)
                expanded["v"] = v4.repeat_interleave(group, dim=1)
            attempt(f"{name}_expanded", backend, expanded["k"], expanded["v"], False)
        except Exception as e:  # noqa: BLE001
            rec[f"{name}_expanded_error"] = _err(e)
    expanded.clear()


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def time_flex(rec, times, outs, q4, k4, v4, mask_mod, batch, q_len, kv_len, gqa, scale):
    """FlexAttention with a block mask from ``mask_mod`` (eager in the smoke run: its "use torch.compile" warning is
    silenced there)."""
    with warnings.catch_warnings():
        if RUN.smoke:
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        _time_flex_inner(rec, times, outs, q4, k4, v4, mask_mod, batch, q_len, kv_len, gqa, scale)


def _time_flex_inner(rec, times, outs, q4, k4, v4, mask_mod, batch, q_len, kv_len, gqa, scale):
    from torch.nn.attention.flex_attention import create_block_mask

    try:
        t0 = time.time()
        bm = create_block_mask(mask_mod, batch, None, q_len, kv_len, device=RUN.dev)
        flex = _flex()
        kw = {"enable_gqa": True} if gqa else {}

        def fn():
            return flex(q4, k4, v4, block_mask=bm, scale=scale, **kw)

        outs["flex"] = fn()
        if not RUN.smoke:
            torch.cuda.synchronize()
        rec["flex_first_call_s"] = time.time() - t0
        rec["flex_mode"] = "eager flex_attention (CPU smoke)" if RUN.smoke else "torch.compile(flex_attention)"
        times["flex"] = bench_graph_or_eager(fn, rec, "flex")
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rec["flex_error"] = _err(e)
