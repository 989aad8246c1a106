"""Compile the Gluon prefill kernel for an H100 (sm_90) on a machine without a GPU, and report its resources.

    python -m kernels.tools.gluon_compile [--config '{"pingpong": false}'] [--dtype bf16] [--group 1] [--head 128]

Gluon has no CPU interpreter, so this is how a change to ``kernels/attention/prefill_hopper.py`` is checked before a GPU
call: it compiles the same launch ``prefill_wgmma_attention`` makes (through ``launch_plan``) for compute
capability 9.0 behind a compile-only driver, runs the bundled ``cuobjdump`` on the cubin and prints registers per
thread, spill stack, local memory, shared memory and warps. The kernel is written against triton 3.6 (the lent
H100's version); Gluon's API moves between releases, so other versions may not compile it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

H100_SMS = 132
H100_SHARED_BYTES = 232448  # the opt-in maximum per block on compute capability 9.0


class _CompileOnlyCuda:
    """Just enough of triton's CUDA driver for ``JITFunction.warmup`` to compile (nothing can be launched)."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("compile-only driver: nothing can run")


@contextlib.contextmanager
def compile_only(arch: int = 90):
    """Make triton compile for ``sm_<arch>`` without a GPU inside the block."""
    previous = getattr(driver, "_active", None)  # reset_active() would build the default driver, which needs a GPU
    driver.set_active(_CompileOnlyCuda(arch))
    try:
        yield
    finally:
        driver._active = previous


def resources(cubin: bytes) -> dict:
    """Registers per thread, spill stack and local memory (bytes) of a cubin's kernel, from ``cuobjdump``."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}
    return {"registers": found["REG"], "stack_bytes": found["STACK"], "local_bytes": found["LOCAL"]}


def compile_prefill(
    config: dict | None = None,
    dtype: torch.dtype = torch.bfloat16,
    group: int = 1,
    head: int = 128,
    num_q_heads: int = 8,
    tokens: int = 512,
    paged: bool = False,
    mixed: bool = False,
    window: int = 0,
    kv_fp8: bool = False,
) -> dict:
    """Compile one launch of ``prefill_wgmma_attention`` for sm_90 and return its resources (see module doc)."""
    from kernels.attention import prefill_hopper as pw

    if pw.gluon is None:
        raise RuntimeError(f"gluon unavailable: {pw.GLUON_ERROR}")
    q = torch.zeros(tokens, num_q_heads, head, dtype=dtype)
    kv = torch.zeros(tokens, num_q_heads // group, head, dtype=dtype)
    cu = torch.tensor([0, tokens // 2, tokens], dtype=torch.int32)
    with compile_only(90):
        if paged or mixed:
            block_size = 16
            nb = tokens // block_size + 2
            cache_dtype = torch.float8_e4m3fn if kv_fp8 else dtype
            cache = torch.zeros(nb, block_size, num_q_heads // group, head, dtype=cache_dtype)
            bt = torch.zeros(2, nb, dtype=torch.int32)
            ctx = torch.zeros(2, dtype=torch.int32)
            kernel, grid, args, kwargs = pw.launch_plan(
                q,
                cu,
                head**-0.5,
                tokens // 2,
                torch.empty_like(q),
                config,
                H100_SMS,
                paged=(cache, cache.clone(), bt, ctx),
                new_kv=(kv, kv.clone()) if mixed else None,
                window=window,
            )
        else:
            kernel, grid, args, kwargs = pw.launch_plan(
                q, cu, head**-0.5, tokens // 2, torch.empty_like(q), config, H100_SMS, new_kv=(kv, kv.clone())
            )
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
    info = resources(compiled.asm["cubin"])
    # for the warp-specialised kernel "registers" is the count at launch; setmaxnreg then moves registers from the
    # loader warp's group to the consumer warp groups (consumer_regs / loader_regs in the config)
    info.update(
        shared_bytes=int(compiled.metadata.shared),
        warps=int(compiled.metadata.num_warps),
        kernel=compiled.metadata.name,
    )
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="{}", help="JSON overrides of prefill_hopper.DEFAULT_CONFIG")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--group", type=int, default=1, help="query heads per KV head")
    ap.add_argument("--head", type=int, choices=(64, 128), default=128)
    ap.add_argument("--paged", action="store_true", help="K/V through a block table (16-token blocks)")
    ap.add_argument("--mixed", action="store_true", help="context through a block table, new tokens' K/V contiguous")
    ap.add_argument("--window", type=int, default=0, help="sliding window (tokens; the paged form only)")
    ap.add_argument("--fp8", action="store_true", help="float8_e4m3fn caches (the paged form only)")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    info = compile_prefill(
        json.loads(a.config), dtype, a.group, a.head, paged=a.paged, mixed=a.mixed, window=a.window, kv_fp8=a.fp8
    )
    print(json.dumps(info))


if __name__ == "__main__":
    main()
