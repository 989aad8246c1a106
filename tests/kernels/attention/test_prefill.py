"""Paged prefill with cached context against the torch reference."""

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import CUDA, DEVICE, DTYPES, assert_close, dtype_id, make_paged, poisoned_like  # noqa: E402

from kernels import reference as ref  # noqa: E402
from kernels.attention import dispatch, prefill_plan  # noqa: E402


def _prefill_inputs(
    context_lens, new_lens, num_q_heads, num_kv_heads, head_size, block_size, dtype, seed, grow_keys=0.0
):
    """A paged cache holding every sequence's context and new tokens, the new tokens' queries, cu_seqlens and
    context lengths (device tensors), and the softmax scale.

    ``grow_keys > 0`` adds ``grow_keys * (1 + pos // 32)`` times one unit vector to the key at position ``pos``
    and the same vector times ``sqrt(head_size)`` to every query, so each row's score maximum rises by about
    ``grow_keys * log2(e)`` (log2 units) from one 32-key tile to the next."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + n for c, n in zip(context_lens, new_lens)]
    k, v, bt = make_paged(seq_lens, num_kv_heads, head_size, block_size, dtype, gen=gen)
    if grow_keys:
        unit = torch.zeros(head_size)
        unit[0] = 1.0
        for s, n in enumerate(seq_lens):
            for pos in range(n):
                blk, off = int(bt[s, pos // block_size]), pos % block_size
                k[blk, off] += (grow_keys * (1 + pos // 32) * unit).to(dtype).to(k.device)
    cu = [0]
    for n in new_lens:
        cu.append(cu[-1] + n)
    q = torch.randn((cu[-1], num_q_heads, head_size), generator=gen)
    if grow_keys:
        q[..., 0] += head_size**0.5
    q = q.to(dtype).to(DEVICE)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    ctx_t = torch.tensor(context_lens, dtype=torch.int32, device=DEVICE)
    return seq_lens, k, v, bt, q, cu_t, ctx_t, head_size**-0.5


def _run_prefill(
    context_lens,
    new_lens,
    num_q_heads,
    num_kv_heads,
    head_size,
    block_size,
    dtype,
    seed=0,
    config=None,
    pass_max=True,
    grow_keys=0.0,
):
    seq_lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(
        context_lens, new_lens, num_q_heads, num_kv_heads, head_size, block_size, dtype, seed, grow_keys
    )
    out = poisoned_like(q)
    dispatch.paged_prefill_attention(
        q, k, v, bt, cu_t, ctx_t, scale, out=out, config=config, max_query_len=max(new_lens) if pass_max else None
    )
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale)
    assert_close(out, expect, dtype, f"prefill ctx={context_lens} new={new_lens}")
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_prefill_boundaries(block_size, dtype):
    b = block_size
    ctx = [0, 0, b, b - 1, 2 * b + 1, 37]
    new = [1, b + 1, b, 1, b - 1, 70]
    _run_prefill(ctx, new, 4, 2, 64, block_size, dtype, seed=block_size)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_size", [80, 96, 128])
def test_prefill_heads_groups(head_size, group, dtype):
    rng = random.Random(head_size + group)
    ctx = [rng.randint(0, 90) for _ in range(3)]
    new = [rng.randint(1, 70) for _ in range(3)]
    _run_prefill(ctx, new, 1 * group, 1, head_size, 16, dtype, seed=head_size * group, pass_max=group != 4)


def test_prefill_empty_sequence_and_tiles():
    # a sequence with no new tokens in the middle of the batch, and tiny tiles
    _run_prefill([5, 40, 0], [9, 0, 33], 4, 4, 64, 16, DTYPES[0], config=dict(block_m=16, block_n=16))


def test_prefill_chunked_equals_whole():
    """Prefill in two chunks (second with the first as context) == one pass."""
    dtype = torch.float32
    gen = torch.Generator().manual_seed(11)
    n, split = 90, 37
    k, v, bt = make_paged([n], 2, 64, 16, dtype, gen=gen)
    q = torch.randn((n, 4, 64), generator=gen).to(DEVICE)
    whole = dispatch.paged_prefill_attention(
        q,
        k,
        v,
        bt,
        torch.tensor([0, n], dtype=torch.int32, device=DEVICE),
        torch.tensor([0], dtype=torch.int32, device=DEVICE),
        0.125,
    )
    a = dispatch.paged_prefill_attention(
        q[:split],
        k,
        v,
        bt,
        torch.tensor([0, split], dtype=torch.int32, device=DEVICE),
        torch.tensor([0], dtype=torch.int32, device=DEVICE),
        0.125,
    )
    b = dispatch.paged_prefill_attention(
        q[split:],
        k,
        v,
        bt,
        torch.tensor([0, n - split], dtype=torch.int32, device=DEVICE),
        torch.tensor([split], dtype=torch.int32, device=DEVICE),
        0.125,
    )
    assert_close(torch.cat([a, b]), whole.double(), dtype)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=8, deadline=None)
    @given(
        seqs=st.lists(st.tuples(st.integers(0, 100), st.integers(1, 60)), min_size=1, max_size=3),
        group=st.sampled_from([1, 2, 4]),
        head_size=st.sampled_from([64, 80, 128]),
        block_size=st.sampled_from([8, 16, 32]),
        seed=st.integers(0, 2**16),
    )
    def test_prefill_hypothesis(seqs, group, head_size, block_size, seed):
        ctx = [c for c, _ in seqs]
        new = [n for _, n in seqs]
        _run_prefill(ctx, new, 2 * group, 2, head_size, block_size, DTYPES[0], seed=seed)
except ImportError:  # pragma: no cover
    pass


# fp16, plus bf16 on CUDA
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
def test_prefill_one_token_blocks(dtype):
    # the harness reads contiguous extents through [num_slots, 1, heads, d] views and a block table of slots
    _run_prefill([0, 21, 5], [13, 4, 40], 4, 2, 64, 1, dtype, seed=3)


# --------------------------------------------------------------------------------------
# new tokens' K/V from contiguous tensors (new_key / new_value)
# --------------------------------------------------------------------------------------


def _run_prefill_newkv(
    context_lens,
    new_lens,
    num_q_heads,
    num_kv_heads,
    head_size,
    block_size,
    dtype,
    seed,
    config=None,
    max_context_len=None,
    grow_keys=0.0,
):
    seq_lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(
        context_lens, new_lens, num_q_heads, num_kv_heads, head_size, block_size, dtype, seed, grow_keys
    )
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale)
    # the new tokens' K/V as contiguous tensors, then poisoned in the cache: they must not be read from there
    kn = torch.cat([ref.gather_kv(k, bt[s], seq_lens[s])[context_lens[s] :] for s in range(len(seq_lens))])
    vn = torch.cat([ref.gather_kv(v, bt[s], seq_lens[s])[context_lens[s] :] for s in range(len(seq_lens))])
    kn, vn = kn.contiguous(), vn.contiguous()
    for s, (c, n) in enumerate(zip(context_lens, new_lens)):
        for pos in range(c, c + n):
            blk = int(bt[s, pos // block_size])
            k[blk, pos % block_size] = float("nan")
            v[blk, pos % block_size] = float("nan")
    out = poisoned_like(q)
    dispatch.paged_prefill_attention(
        q,
        k,
        v,
        bt,
        cu_t,
        ctx_t,
        scale,
        out=out,
        max_query_len=max(new_lens),
        new_key=kn,
        new_value=vn,
        config=config,
        max_context_len=max_context_len,
    )
    assert_close(out, expect, dtype, f"newkv ctx={context_lens} new={new_lens} config={config}")
    return out


NEWKV_CONFIGS = [dict(tma=False), dict(tma=True), dict(tma=True, block_m=32, block_n=16, reverse_m=False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("config", NEWKV_CONFIGS, ids=["pointers", "tma", "tma_m32_n16"])
def test_prefill_newkv_with_context(config, dtype):
    # context through the table (tail tiles masked), new tokens contiguous; a sequence with no new tokens
    _run_prefill_newkv([0, 17, 40, 5], [40, 9, 0, 70], 4, 2, 64, 16, dtype, seed=5, config=config)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
@pytest.mark.parametrize("group", [1, 4])
def test_prefill_newkv_pure_prefill_hint(group, dtype):
    # context 0 everywhere with the max_context_len=0 hint (context loop compiled away), and the last
    # sequence's diagonal tile reaching past the end of the new K/V tensors (TMA zero fill)
    for config in NEWKV_CONFIGS[:2]:
        _run_prefill_newkv(
            [0, 0, 0], [33, 1, 50], 2 * group, 2, 128, 16, dtype, seed=7 + group, config=config, max_context_len=0
        )


def test_prefill_newkv_padded_head():
    # head size 80 (padded to 128): pointer loads even when TMA is asked for
    _run_prefill_newkv([3, 0], [20, 35], 4, 2, 80, 8, DTYPES[0], seed=9, config=dict(tma=True))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="packed 16-bit exp2 is inline PTX: the interpreter cannot run it")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_prefill_exp16(dtype):
    # config exp16: exp2 of two scores per instruction on packed 16-bit values, both prefill paths, with and
    # without context, held to the same tolerances as the default
    _run_prefill([0, 17, 300], [40, 9, 70], 8, 2, 128, 16, dtype, seed=11, config=dict(exp16=True))
    for config in NEWKV_CONFIGS[:2]:
        cfg = dict(config, exp16=True)
        _run_prefill_newkv([0, 17, 40, 5], [40, 9, 0, 70], 4, 2, 64, 16, dtype, seed=5, config=cfg)
        _run_prefill_newkv([0, 0], [300, 129], 4, 4, 128, 16, dtype, seed=6, config=cfg, max_context_len=0)


# --------------------------------------------------------------------------------------
# lazy rescale (config lazy_rescale): the running maximum moves only when it grows by more than tau
# --------------------------------------------------------------------------------------

LAZY_CASES = [([0, 17, 100], [40, 9, 120], None), ([0, 0], [150, 97], 0)]  # (context, new, max_context_len)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("newkv", [False, True], ids=["paged", "newkv"])
def test_prefill_lazy_rescale_settled_max(newkv, dtype):
    # Random scores: after the first tiles no row's maximum grows by more than 8 (log2 units), so most tiles keep
    # the stale maximum. Held to the default's tolerances against the reference, and not bit-identical to the
    # eager step (the stale maximum changes the rounding), which shows that the lazy step ran.
    for ctx, new, max_ctx in LAZY_CASES:
        outs = []
        for cfg in ({}, {"lazy_rescale": True}):
            if newkv:
                outs.append(
                    _run_prefill_newkv(
                        ctx, new, 4, 2, 64, 16, dtype, seed=21, config=dict(cfg, tma=False), max_context_len=max_ctx
                    )
                )
            else:
                outs.append(_run_prefill(ctx, new, 4, 2, 64, 16, dtype, seed=21, config=cfg))
        assert not torch.equal(outs[0], outs[1]), "lazy_rescale gave the eager step's bits: not taken?"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("newkv", [False, True], ids=["paged", "newkv"])
def test_prefill_lazy_rescale_growing_max(newkv, dtype):
    # Scores rise by about 12 * log2(e) = 17 (log2 units) per 32-key tile, past the threshold of 8 at every
    # tile, so every unmasked step must rescale: in 16-bit dtypes a step that kept the stale maximum would let P
    # grow by exp2(17) per tile and overflow within a few tiles (NaN), which assert_close catches (checked by
    # breaking the branch; fp32 holds the 2**85 these lengths reach, so there only the values are checked).
    # tau 1 in the second run also mixes rescaled and kept steps.
    for tau in (True, 1.0):
        cfg = {"lazy_rescale": tau}
        for ctx, new, max_ctx in LAZY_CASES:
            if newkv:
                _run_prefill_newkv(
                    ctx,
                    new,
                    4,
                    2,
                    64,
                    16,
                    dtype,
                    seed=22,
                    config=dict(cfg, tma=False),
                    max_context_len=max_ctx,
                    grow_keys=12.0,
                )
            else:
                _run_prefill(ctx, new, 4, 2, 64, 16, dtype, seed=22, config=cfg, grow_keys=12.0)


# --------------------------------------------------------------------------------------
# software-pipelined scores in the new-K/V path (config pipeline_qk)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("config", NEWKV_CONFIGS, ids=["pointers", "tma", "tma_m32_n16"])
def test_prefill_newkv_pipeline_qk(config, dtype):
    # Query tiles with no unmasked key tile before the diagonal (the first), with one, and with several (the
    # prologue, loop and epilogue of the pipelined loop), with and without context, and with score maxima that
    # rise from tile to tile (every step rescales): all against the reference.
    cfg = dict(config, pipeline_qk=True)
    _run_prefill_newkv([0, 17, 40, 5], [40, 9, 0, 70], 4, 2, 64, 16, dtype, seed=5, config=cfg)
    _run_prefill_newkv([0, 0, 0], [33, 1, 130], 4, 2, 64, 16, dtype, seed=8, config=cfg, max_context_len=0)
    _run_prefill_newkv([0, 0], [150, 97], 4, 2, 64, 16, dtype, seed=22, config=cfg, max_context_len=0, grow_keys=12.0)


# --------------------------------------------------------------------------------------
# default tile shapes: 128 x 128 / 8 warps for long prompts, 64 x 64 / 4 warps otherwise
# --------------------------------------------------------------------------------------

WIDE = dict(block_m=128, block_n=128, num_warps=8, num_stages=3)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if not (CUDA and d == torch.float32)], ids=dtype_id)
def test_prefill_wide_tiles(dtype):
    # The 128 x 128 / 8-warp shape on both paths: tiles that straddle the context end, several sequences with
    # fewer new tokens than one tile, and a grouped-query batch. Not fp32 on the GPU: too much shared memory there
    # (the default never picks it; see test_prefill_default_shapes).
    _run_prefill([0, 17, 300], [140, 9, 70], 4, 2, 128, 16, dtype, seed=31, config=WIDE)
    _run_prefill_newkv([0, 17, 300, 5], [140, 9, 70, 0], 4, 2, 128, 16, dtype, seed=32, config=dict(WIDE, tma=False))
    if dtype != torch.float32:
        _run_prefill_newkv([3000, 0], [130, 257], 8, 2, 128, 16, dtype, seed=33, config=dict(WIDE, tma=True))


def test_prefill_shape_override_starts_from_base(monkeypatch):
    # A config that sets only part of the tile shape applies on top of the 64 x 64 base, as before the wide default.
    # With the GPU defaults (forced here), block_m 64 alone on a context batch of long prompts would otherwise meet
    # the wide default's block_n 128 and fail the new-K/V path's block_m % block_n check.
    assert prefill_plan.shape_override({"block_m": 32}) and prefill_plan.shape_override({"num_warps": 8})
    assert not prefill_plan.shape_override({"tma": False}) and not prefill_plan.shape_override(None)
    monkeypatch.setattr(prefill_plan, "interpreting", lambda: False)
    dtype = torch.float16
    _run_prefill_newkv(
        [0, 300], [200, 129], 4, 2, 128, 16, dtype, seed=34, config={"block_m": 64, "tma": False}, max_context_len=300
    )
    _run_prefill([0, 300], [200, 129], 4, 2, 128, 16, dtype, seed=35, config={"num_warps": 4})
