"""Which bytes a Triton kernel call reads, counted under the CPU interpreter (``TRITON_INTERPRET=1``).

:func:`record_loads` wraps the interpreter's load, so every element a kernel loads (masked-off lanes excluded, as on
the GPU, where a masked lane issues no memory request) is recorded by address. :func:`bytes_read` and
:func:`elements_read` then say how much of a given tensor was read, and which elements. The sliding-window tests use
it to show that no block-table entry before a window is read, and the sliding-window benchmark's CPU smoke run to
check its model of the bytes the kernels move against the interpreter's count.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


@contextlib.contextmanager
def record_loads():
    """Within the block, every interpreted ``tl.load`` appends ``(addresses, element_size)`` (a 1-D uint64 array of
    the loaded lanes' byte addresses) to the yielded list. Needs ``TRITON_INTERPRET=1`` set before triton was first
    imported."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    original = builder.create_masked_load
    loads: list[tuple[np.ndarray, int]] = []

    def create_masked_load(ptrs, mask, other, cache_policy, is_volatile):
        addr = np.asarray(ptrs.data)
        live = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        loads.append((addr[live].astype(np.uint64).ravel(), size))
        return original(ptrs, mask, other, cache_policy, is_volatile)

    builder.create_masked_load = create_masked_load
    try:
        yield loads
    finally:
        del builder.create_masked_load  # the class's method again


def _span(t: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last byte address of ``t``'s storage region that its view can reach."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def elements_read(loads, t: torch.Tensor) -> np.ndarray:
    """Storage offsets (in elements, from ``t.data_ptr()``) of every element of ``t`` that was loaded, with
    repeats."""
    lo, hi = _span(t)
    parts = [a[(a >= lo) & (a < hi)] for a, _ in loads]
    addr = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return ((addr - np.uint64(lo)) // np.uint64(t.element_size())).astype(np.int64)


def bytes_read(loads, t: torch.Tensor) -> tuple[int, int]:
    """``(bytes loaded with repeats, distinct bytes loaded)`` of tensor ``t``."""
    idx = elements_read(loads, t)
    return int(idx.size) * t.element_size(), int(np.unique(idx).size) * t.element_size()
