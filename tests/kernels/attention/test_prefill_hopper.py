"""The Gluon warp-group-MMA prefill kernel (kernels/attention/prefill_hopper.py) against the torch reference,
and the routing to it (kernels/attention/dispatch.py).

Gluon has no CPU interpreter, so the kernel itself is tested on a compute-capability-9 GPU only; on the CPU
these tests check that asking for it falls back to the Triton kernel, and that direct calls say why they cannot run.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import CUDA, DEVICE, assert_close, dtype_id, poisoned_like  # noqa: E402

from kernels import reference as ref  # noqa: E402
from kernels.attention import dispatch  # noqa: E402
from kernels.attention import prefill_hopper as pw  # noqa: E402

from .test_prefill import _prefill_inputs, _run_prefill, _run_prefill_newkv  # noqa: E402

HOPPER = CUDA and torch.cuda.get_device_capability()[0] == 9 and pw.gluon is not None
needs_hopper = pytest.mark.skipif(not HOPPER, reason="warp-group MMA needs a compute-capability-9 GPU and Gluon")

SINGLE = {"warp_specialize": False, "persistent": False, "pingpong": False}  # the single-partition kernel
WS = {"warp_specialize": True, "persistent": False, "pingpong": False}
CONFIGS = {
    "default": {},  # warp-specialised, persistent, snake order, two Q buffers, ping-pong
    "single": dict(SINGLE),
    "no_pipeline": dict(SINGLE, pipeline=False),
    "n64": dict(SINGLE, block_n=64),
    "m64_w4": dict(SINGLE, block_m=64, block_n=64, num_warps=4),
    "n64_maxnreg128": dict(SINGLE, block_n=64, maxnreg=128),
    "ws": dict(WS),
    "ws_n64": dict(WS, block_n=64),
    "ws_persistent": dict(WS, persistent=True),
    "ws_persistent_rr_q1": dict(WS, persistent=True, snake=False, q_buffers=1),
    "ws_pingpong_q1": dict(WS, persistent=True, pingpong=True, q_buffers=1),
}
# lengths: 1, a tile boundary and +-1, odd ones; sequences that end inside a tile (TMA reads the next sequence's
# rows there, which the causal mask must hide) and a last sequence whose tiles run past the end (zero fill)
LENS = [1, 127, 128, 129, 300, 64, 700]


def _direct(new_lens, num_q_heads, num_kv_heads, head_size, dtype, seed, config=None, grow_keys=0.0):
    """Call prefill_wgmma_attention itself on contiguous K/V and compare with the reference."""
    context = [0] * len(new_lens)
    seq_lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs(
        context, new_lens, num_q_heads, num_kv_heads, head_size, 16, dtype, seed, grow_keys
    )
    expect = ref.ref_paged_prefill(q, k, v, bt, cu_t, ctx_t, scale)
    kn = torch.cat([ref.gather_kv(k, bt[s], n) for s, n in enumerate(seq_lens)]).contiguous()
    vn = torch.cat([ref.gather_kv(v, bt[s], n) for s, n in enumerate(seq_lens)]).contiguous()
    out = poisoned_like(q)
    pw.prefill_wgmma_attention(q, kn, vn, cu_t, scale, max(new_lens), out=out, config=config)
    assert_close(out, expect, dtype, f"wgmma new={new_lens} heads={num_q_heads}/{num_kv_heads} config={config}")


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("group", [1, 4, 8])
def test_wgmma_prefill_matches_reference(group, config, dtype):
    _direct(LENS, 8, 8 // group, 128, dtype, seed=20 + group, config=CONFIGS[config])


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("config", ["default", "m64_w4", "ws", "single"])
def test_wgmma_prefill_head64(config, dtype):
    _direct([40, 200, 1], 4, 2, 64, dtype, seed=31, config=CONFIGS[config])


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("config", ["default", "single", "no_pipeline", "ws", "ws_persistent"])
def test_wgmma_prefill_rising_maximum(config):
    # each 32-key tile raises every row's score maximum, so every step must rescale the accumulator
    _direct([300, 257], 4, 4, 128, torch.float16, seed=41, config=CONFIGS[config], grow_keys=3.0)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_wgmma_prefill_through_router(dtype):
    # paged_prefill_attention(new_key=..., max_context_len=0, config={"wgmma": ...}) takes the Gluon kernel; the
    # cache slots of the new tokens are NaN, so reading them instead of new_key/new_value would fail
    for wg in (True, CONFIGS["single"], CONFIGS["ws"], CONFIGS["ws_n64"]):
        _run_prefill_newkv(
            [0, 0, 0], [33, 1, 500], 8, 2, 128, 16, dtype, seed=51, config={"wgmma": wg}, max_context_len=0
        )


@pytest.mark.gpu
@needs_hopper
def test_wgmma_prefill_long():
    # 24 and 8 tiles of 128 rows: many pipeline steps and both K/V stages reused many times
    for config in ("default", "single", "ws", "ws_persistent"):
        _direct([3000, 1000], 8, 2, 128, torch.bfloat16, seed=61, config=CONFIGS[config])


def test_wgmma_request_falls_back_when_unsupported():
    # on the CPU (and for head sizes or dtypes the kernel lacks) config wgmma=True runs the Triton kernel instead
    dtype = torch.float32 if not CUDA else torch.float16
    _run_prefill_newkv([0, 0], [20, 35], 4, 2, 80, 8, dtype, seed=9, config={"wgmma": True}, max_context_len=0)


def test_wgmma_direct_call_says_why_not():
    q = torch.zeros(8, 2, 80, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="prefill_wgmma_attention: "):
        pw.prefill_wgmma_attention(q, q, q, torch.tensor([0, 8], dtype=torch.int32, device=DEVICE), 0.1, 8)
    ok, why = pw.supported(q, q, q, 0.1)
    assert not ok and why


def _count_calls(monkeypatch, name):
    """Replace ``kernels.attention.prefill_hopper.<name>`` by a wrapper that records each call; returns the record."""
    calls = []
    real = getattr(pw, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pw, name, counting)
    return calls


def test_default_routes_pure_prefill_to_wgmma(monkeypatch):
    # with no config, pure prefill with new K/V (max_context_len=0) takes the Gluon kernel's contiguous form wherever
    # it can run; a Triton A/B config (no "wgmma" key) or an unsupported GPU keeps the Triton kernel, and cached
    # context goes to the mixed form (test_mixed_routing)
    calls = _count_calls(monkeypatch, "prefill_wgmma_attention")
    dtype = torch.float16 if CUDA else torch.float32
    _run_prefill_newkv([0, 0], [40, 70], 4, 2, 128, 16, dtype, seed=71, max_context_len=0)
    assert len(calls) == (1 if HOPPER else 0)
    _run_prefill_newkv([0, 0], [40, 70], 4, 2, 128, 16, dtype, seed=72, max_context_len=0, config={"fold_scale": False})
    _run_prefill_newkv([5, 0], [40, 70], 4, 2, 128, 16, dtype, seed=73, max_context_len=5)
    assert len(calls) == (1 if HOPPER else 0)
    monkeypatch.setattr(dispatch, "WGMMA_PREFILL_DEFAULT", False)
    _run_prefill_newkv([0, 0], [40, 70], 4, 2, 128, 16, dtype, seed=74, max_context_len=0)
    assert len(calls) == (1 if HOPPER else 0)


def test_default_routes_paged_prefill_to_wgmma(monkeypatch):
    # with no config, paged_prefill_attention takes the Gluon kernel's paged form for block sizes TMA copies whole,
    # and the Triton kernel for one-token blocks, a Triton A/B config, or with WGMMA_PAGED_PREFILL_DEFAULT off
    calls = _count_calls(monkeypatch, "prefill_wgmma_paged_attention")
    dtype = torch.float16 if CUDA else torch.float32
    _run_prefill([0, 30], [40, 70], 4, 2, 128, 16, dtype, seed=75)
    assert len(calls) == (1 if HOPPER else 0)
    _run_prefill([0, 30], [40, 70], 4, 2, 128, 1, dtype, seed=76)
    _run_prefill([0, 30], [40, 70], 4, 2, 128, 16, dtype, seed=77, config={"fold_scale": False})
    monkeypatch.setattr(dispatch, "WGMMA_PAGED_PREFILL_DEFAULT", False)
    _run_prefill([0, 30], [40, 70], 4, 2, 128, 16, dtype, seed=78)
    assert len(calls) == (1 if HOPPER else 0)


# --------------------------------------------------------------------------------------
# the paged form: every key through the block table (paged_prefill_attention's contract), with cached context
# --------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("block_size", [8, 16, 32, 128, 256])
def test_wgmma_paged_prefill_matches_reference(block_size, dtype):
    # make_paged scatters the blocks, fills unused cache slots with NaN and table entries past a sequence's blocks
    # with -1 / 2**31 - 7: the kernel must neither follow those entries nor let a NaN slot into P.V
    _run_prefill(
        [0, 17, 0, 3000, 129], [40, 9, 300, 128, 1], 8, 2, 128, block_size, dtype, seed=81, config={"wgmma": True}
    )


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("config", ["default", "ws", "ws_persistent_rr_q1", "ws_n64"])
def test_wgmma_paged_prefill_configs(config, group):
    _run_prefill(
        [5, 0, 250, 64],
        [127, 129, 200, 700],
        8,
        8 // group,
        128,
        16,
        torch.bfloat16,
        seed=82 + group,
        config={"wgmma": CONFIGS[config]},
    )


@pytest.mark.gpu
@needs_hopper
def test_wgmma_paged_prefill_head64_and_rising_maximum():
    _run_prefill([0, 33], [40, 200], 4, 2, 64, 16, torch.float16, seed=83, config={"wgmma": True})
    _run_prefill([100, 0], [300, 257], 4, 4, 128, 16, torch.float16, seed=84, config={"wgmma": True}, grow_keys=3.0)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("seed", range(8))
def test_wgmma_paged_prefill_random_batches(seed):
    rng, contexts, new, group = _random_batch(seed)
    _run_prefill(
        contexts,
        new,
        8,
        8 // group,
        128,
        rng.choice([8, 16, 32, 64, 128]),
        torch.bfloat16,
        seed=90 + seed,
        config={"wgmma": True},
    )


def _random_batch(seed):
    """A random batch: 1-5 sequences, context 0-600, 0-400 new tokens (sequences with none among them, at least one
    with some), one to eight query heads per KV head. Returns the generator for the caller's further choices."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 5)
    contexts = [rng.choice([0, rng.randint(1, 600)]) for _ in range(n)]
    new = [rng.choice([0, rng.randint(1, 400)]) for _ in range(n)]
    new[rng.randrange(n)] = rng.randint(1, 400)
    return rng, contexts, new, rng.choice([1, 2, 4, 8])


# --------------------------------------------------------------------------------------
# the mixed form: new K/V contiguous with cached context (context through the block table)
# --------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("block_size", [8, 16, 32, 128])
def test_wgmma_mixed_prefill_matches_reference(block_size, dtype):
    # _run_prefill_newkv fills the new tokens' cache slots with NaN (they must come from new_key/new_value) as well as
    # every unused slot; contexts that end inside a block and inside a key tile, a sequence with no new tokens
    for max_context_len in (None, 3000):
        _run_prefill_newkv(
            [0, 17, 40, 5, 3000, 129],
            [40, 9, 0, 70, 300, 128],
            8,
            2,
            128,
            block_size,
            dtype,
            seed=101,
            config={"wgmma": True},
            max_context_len=max_context_len,
        )


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("seed", range(6))
def test_wgmma_mixed_prefill_random_batches(seed):
    rng, contexts, new, group = _random_batch(seed)
    head = rng.choice([64, 128])
    _run_prefill_newkv(
        contexts,
        new,
        8,
        8 // group,
        head,
        rng.choice([8, 16, 32, 64]),
        torch.bfloat16,
        seed=110 + seed,
        config={"wgmma": rng.choice([True, CONFIGS["ws"], CONFIGS["ws_n64"]])},
    )


def test_mixed_routing(monkeypatch):
    # new K/V with cached context takes the mixed form only when asked (config) or with WGMMA_MIXED_PREFILL_DEFAULT on
    calls = _count_calls(monkeypatch, "prefill_wgmma_mixed_attention")
    dtype = torch.float16 if CUDA else torch.float32
    expect = 0
    for config, switch in ((None, False), ({"wgmma": True}, False), (None, True), ({"fold_scale": False}, True)):
        monkeypatch.setattr(dispatch, "WGMMA_MIXED_PREFILL_DEFAULT", switch)
        _run_prefill_newkv([30, 0], [40, 70], 4, 2, 128, 16, dtype, seed=120, config=config)
        expect += HOPPER and (config == {"wgmma": True} or (config is None and switch))
        assert len(calls) == expect


def test_wgmma_paged_says_why_not():
    dtype = torch.float16 if CUDA else torch.float32
    seq_lens, k, v, bt, q, cu_t, ctx_t, scale = _prefill_inputs([0], [20], 4, 2, 128, 1, dtype, seed=85)
    ok, why = pw.supported_paged(q, k, v, scale)
    assert not ok and why
    with pytest.raises(ValueError, match="prefill_wgmma_paged_attention: "):
        pw.prefill_wgmma_paged_attention(q, k, v, bt, cu_t, ctx_t, scale, 20)
    # one-token blocks (the harness's contiguous extents) fall back to the Triton kernel
    _run_prefill([3, 0], [20, 35], 4, 2, 128, 1, dtype, seed=86, config={"wgmma": True})
