"""write_kv and copy_blocks against the torch reference (exact equality)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import DEVICE, DTYPES, dtype_id  # noqa: E402

from kernels import cache_ops  # noqa: E402
from kernels import reference as ref  # noqa: E402


def _same(a, b):
    # bitwise equality that also treats NaN == NaN (poisoned, untouched slots)
    return torch.equal(
        a.view(torch.int16) if a.element_size() == 2 else a.view(torch.int32),
        b.view(torch.int16) if b.element_size() == 2 else b.view(torch.int32),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64], ids=dtype_id)
@pytest.mark.parametrize("block_size,heads,head_size", [(16, 2, 64), (8, 3, 80), (32, 1, 96), (24, 4, 128)])
def test_write_kv(block_size, heads, head_size, slot_dtype, dtype):
    gen = torch.Generator().manual_seed(block_size + heads)
    nb, n = 9, 40
    kc = torch.full((nb, block_size, heads, head_size), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    # distinct slots (duplicates would race), the very last slot of the cache included
    slots = torch.randperm(nb * block_size - 1, generator=gen)[:n].to(slot_dtype)
    slots[0] = -1
    slots[5] = -1
    slots[n - 1] = nb * block_size - 1
    key = torch.randn((n, heads, head_size), generator=gen).to(dtype)
    val = torch.randn((n, heads, head_size), generator=gen).to(dtype)
    kr, vr = kc.clone(), vc.clone()
    ref.ref_write_kv(key, val, kr, vr, slots)
    kd, vd = kc.to(DEVICE), vc.to(DEVICE)
    cache_ops.write_kv(key.to(DEVICE), val.to(DEVICE), kd, vd, slots.to(DEVICE))
    assert _same(kd.cpu(), kr) and _same(vd.cpu(), vr)


def test_write_kv_strided_inputs_and_views():
    # key/value sliced out of a fused qkv projection; caches are views of one [2, ...] allocation
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(5)
    n, heads, d, bs, nb = 12, 2, 64, 16, 4
    qkv = torch.randn((n, 3 * heads, d), generator=gen).to(dtype).to(DEVICE)
    key, val = qkv[:, heads : 2 * heads], qkv[:, 2 * heads :]
    kv = torch.zeros((2, nb, bs, heads, d), dtype=dtype, device=DEVICE)
    slots = torch.tensor([3, -1, 17, 60, 0, 33, -7, 47, 48, 1, 2, 63], device=DEVICE)
    ref_kv = kv.clone()
    cache_ops.write_kv(key, val, kv[0], kv[1], slots)
    ref.ref_write_kv(key, val, ref_kv[0], ref_kv[1], slots)
    assert torch.equal(kv, ref_kv)


def test_write_kv_empty():
    kc = torch.zeros((2, 16, 1, 64), device=DEVICE)
    cache_ops.write_kv(
        torch.zeros((0, 1, 64), device=DEVICE),
        torch.zeros((0, 1, 64), device=DEVICE),
        kc,
        kc.clone(),
        torch.zeros((0,), dtype=torch.int64, device=DEVICE),
    )


def _rand_caches(n, shape, dtype, gen):
    return [torch.randn(shape, generator=gen).to(dtype).to(DEVICE) for _ in range(n)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_copy_blocks_list_of_layers(dtype):
    gen = torch.Generator().manual_seed(1)
    layers = 3
    shape = (12, 16, 2, 80)
    ks = _rand_caches(layers, shape, dtype, gen)
    vs = _rand_caches(layers, shape, dtype, gen)
    caches = list(zip(ks, vs))  # nested [(k0, v0), (k1, v1), ...]
    expect = [(k.clone(), v.clone()) for k, v in caches]
    mapping = torch.tensor([[0, 7], [3, 8], [0, 9], [11, 1]], dtype=torch.int64, device=DEVICE)
    cache_ops.copy_blocks(caches, mapping)
    ref.ref_copy_blocks(expect, mapping)
    for (k, v), (ek, ev) in zip(caches, expect):
        assert torch.equal(k, ek) and torch.equal(v, ev)


@pytest.mark.parametrize("block_dim", [1, 2])
def test_copy_blocks_stacked(block_dim):
    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(2)
    if block_dim == 1:
        shape = (4, 10, 8, 2, 64)  # [2 * layers, num_blocks, block_size, heads, d]
    else:
        shape = (2, 2, 10, 32, 1, 96)  # [layers, 2, num_blocks, ...]
    t = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    e = t.clone()
    mapping = torch.tensor([[1, 2], [1, 3], [9, 0]], dtype=torch.int32, device=DEVICE)
    cache_ops.copy_blocks(t, mapping, block_dim=block_dim)
    ref.ref_copy_blocks(e, mapping, block_dim=block_dim)
    assert torch.equal(t, e)


def test_copy_blocks_large_block():
    # a block of more than one chunk (32 * 8 * 128 = 32768 elements)
    gen = torch.Generator().manual_seed(3)
    ks = _rand_caches(2, (4, 32, 8, 128), torch.float32, gen)
    e = [k.clone() for k in ks]
    mapping = torch.tensor([[0, 3], [2, 1]], device=DEVICE)
    cache_ops.copy_blocks(ks, mapping)
    ref.ref_copy_blocks(e, mapping)
    assert all(torch.equal(a, b) for a, b in zip(ks, e))


def test_copy_blocks_empty_mapping():
    k = torch.zeros((2, 16, 1, 64), device=DEVICE)
    cache_ops.copy_blocks([k], torch.zeros((0, 2), dtype=torch.int64, device=DEVICE))


def test_write_then_decode_end_to_end():
    """write_kv a whole context through a slot mapping, then decode reads it back through the table."""
    from _kernel_testutil import assert_close

    from kernels.attention import paged_decode_attention

    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(4)
    bs, heads, d, nb = 16, 2, 64, 12
    lens = [20, 45]
    perm = torch.randperm(nb, generator=gen)
    bt = torch.stack([perm[:6], perm[6:]]).int().to(DEVICE)
    slots = torch.cat(
        [
            bt[s, torch.arange(n, device=DEVICE) // bs].long() * bs + torch.arange(n, device=DEVICE) % bs
            for s, n in enumerate(lens)
        ]
    )
    key = torch.randn((sum(lens), heads, d), generator=gen).to(dtype).to(DEVICE)
    val = torch.randn((sum(lens), heads, d), generator=gen).to(dtype).to(DEVICE)
    kc = torch.full((nb, bs, heads, d), float("nan"), dtype=dtype, device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    cache_ops.write_kv(key, val, kc, vc, slots)
    q = torch.randn((2, 8, d), generator=gen).to(dtype).to(DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, kc, vc, bt, sl, d**-0.5)
    # reference straight from the contiguous key/value
    starts = torch.tensor([0, lens[0]], dtype=torch.int64, device=DEVICE)
    expect = ref.ref_contiguous_decode(q, key, val, starts, sl, d**-0.5)
    assert_close(out, expect, dtype)
