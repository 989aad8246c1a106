"""Shared helpers for the kernel tests: devices, dtypes, tolerances, random paged caches.

Tolerances (checked against kernels.reference, which computes in float32 from
the same low-precision inputs, or float64 for float32 inputs):

    dtype     max |out - ref|    ||out - ref|| / ||ref||
    float32   1e-4               1e-5
    float16   1e-2               2e-3
    bfloat16  6e-2               1.6e-2

Outputs are O(1) (V ~ N(0, 1)); float16/bfloat16 errors come from rounding P
to the input dtype before the P.V product and from the final rounding of the
output (half an ulp: 4.9e-4 for float16, 3.9e-3 for bfloat16).
"""

from __future__ import annotations

import math

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if CUDA else torch.device("cpu")
# the Triton interpreter mishandles bfloat16, so bf16 runs only on the GPU
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if CUDA else [])

TOL = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (6e-2, 1.6e-2),
}


def dtype_id(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    o, r = out.double(), ref.double()
    assert not torch.isnan(o).any(), f"{what}: NaN in output (unwritten or bad softmax)"
    atol, rtol = TOL[dtype]
    err = (o - r).abs().max().item() if o.numel() else 0.0
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item() if o.numel() else 0.0
    assert err <= atol and rel <= rtol, f"{what}: max abs err {err:.3g} (tol {atol}), rel {rel:.3g} (tol {rtol})"


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


def make_paged(
    seq_lens,
    num_kv_heads,
    head_size,
    block_size,
    dtype,
    *,
    extra_blocks=3,
    gen: torch.Generator | None = None,
    table_width: int | None = None,
):
    """Random K/V caches and a block table built from a random permutation of physical blocks.

    Cache slots that no sequence uses are NaN, and block-table entries past a
    sequence's last block are garbage (-1 and huge numbers), so reading
    anything outside the contract shows up as NaN or a crash.
    """
    nblk = [max(1, math.ceil(n / block_size)) if n > 0 else 0 for n in seq_lens]
    width = max(max(nblk, default=1), 1) if table_width is None else table_width
    total = sum(nblk) + extra_blocks
    perm = torch.randperm(total, generator=gen)
    k = torch.full((total, block_size, num_kv_heads, head_size), float("nan"), dtype=dtype)
    v = torch.full_like(k, float("nan"))
    bt = torch.empty((len(seq_lens), width), dtype=torch.int32)
    bt[:, 0::2] = -1
    bt[:, 1::2] = 2**31 - 7
    pos = 0
    for s, n in enumerate(seq_lens):
        blocks = perm[pos : pos + nblk[s]]
        pos += nblk[s]
        bt[s, : nblk[s]] = blocks.to(torch.int32)
        for j, b in enumerate(blocks.tolist()):
            used = min(block_size, n - j * block_size)
            k[b, :used] = torch.randn((used, num_kv_heads, head_size), generator=gen).to(dtype)
            v[b, :used] = torch.randn((used, num_kv_heads, head_size), generator=gen).to(dtype)
    return k.to(DEVICE), v.to(DEVICE), bt.to(DEVICE)


def make_contiguous(seq_lens, gaps, num_kv_heads, head_size, dtype, gen: torch.Generator):
    """Random K/V pools ``[slots, num_kv_heads, head_size]`` holding each sequence's tokens contiguously, after
    ``gaps[s]`` unused slots; unused slots (and 4 past the end) are NaN. Returns ``(k_pool, v_pool, starts)``
    with ``starts`` an int64 tensor of first slots."""
    starts, pos = [], 0
    for n, g in zip(seq_lens, gaps):
        pos += g
        starts.append(pos)
        pos += n
    k = torch.full((pos + 4, num_kv_heads, head_size), float("nan"), dtype=dtype)
    v = torch.full_like(k, float("nan"))
    for a, n in zip(starts, seq_lens):
        k[a : a + n] = torch.randn((n, num_kv_heads, head_size), generator=gen).to(dtype)
        v[a : a + n] = torch.randn((n, num_kv_heads, head_size), generator=gen).to(dtype)
    return k.to(DEVICE), v.to(DEVICE), torch.tensor(starts, dtype=torch.int64, device=DEVICE)


def boundary_lengths(block_size: int) -> list[int]:
    return [
        1,
        block_size - 1,
        block_size,
        block_size + 1,
        2 * block_size - 1,
        2 * block_size,
        2 * block_size + 1,
        3 * block_size + 5,
    ]
