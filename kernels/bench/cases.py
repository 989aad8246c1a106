"""The benchmark's cases: the decode grid (uniform and mixed lengths), its FlexAttention subset, the prefill cases,
the cache-operation sizes and the sliding-window cases. ``--cpu-smoke`` swaps in tiny shapes."""

from __future__ import annotations

import random

from kernels.bench.run import RUN

# (layout, batch, context) of the uniform cases, and the names of the mixed cases, that also run FlexAttention.
# Every new shape costs a torch.compile (tens of seconds), so only this subset of the grid is measured.
FLEX_CASES = {
    ("mha", 16, 2048),
    ("mha", 16, 8192),
    ("mha", 64, 2048),
    ("mha", 64, 8192),
    ("gqa", 16, 2048),
    ("gqa", 16, 8192),
    ("gqa", 64, 2048),
    ("gqa", 64, 8192),
}
FLEX_MIXED = {"mixed gqa b64 len1-8192"}
FLEX_SMOKE = {("mha", 2, 40), ("gqa", 2, 300)}
FLEX_SMOKE_MIXED = {"mixed gqa b16 len1-8192"}


def decode_cases(quick: bool, skip: set, flex_only: bool, flex_all: bool) -> list[tuple]:
    """(name, batch, q heads, KV heads, lengths, swept with --sweep, with FlexAttention) of every decode case to
    run, uniform lengths first, then mixed ones."""
    layouts = [(32, 32), (32, 8)]
    batches = [1, 16, 64, 256]
    ctxs = [512, 2048, 8192]
    if quick:
        batches, ctxs = [1, 64], [2048, 8192]
    if RUN.smoke:
        layouts, batches, ctxs = [(4, 4), (4, 1)], [1, 2], [40, 300]
    sweep_cases = {
        ("mha", 64, 2048),
        ("gqa", 64, 8192),
        ("mha", 1, 8192),
        ("gqa", 1, 8192),
        ("mha", 16, 8192),
        ("gqa", 16, 8192),
        ("gqa", 256, 2048),
    }
    fcases, fmixed = (FLEX_SMOKE, FLEX_SMOKE_MIXED) if RUN.smoke else (FLEX_CASES, FLEX_MIXED)
    if flex_only and not flex_all:
        # the flex subset at any grid size (it may lie outside --quick's grid)
        batches = sorted({b for _, b, _ in fcases})
        ctxs = sorted({L for _, _, L in fcases}, reverse=True)
    cases = []
    if "decode" not in skip:
        for hq, hkv in layouts:
            lay = "mha" if hq == hkv else "gqa"
            for b in batches:
                for L in ctxs:
                    fl = "flex" not in skip and (flex_all or (lay, b, L) in fcases)
                    if flex_only and not fl:
                        continue
                    cases.append((f"{lay} b{b} ctx{L}", b, hq, hkv, [L] * b, (lay, b, L) in sweep_cases, fl))
    if "mixed" not in skip:
        for hq, hkv in layouts:
            lay = "mha" if hq == hkv else "gqa"
            for b in ([16, 64] if quick else [16, 64, 256]) if not RUN.smoke else [16]:
                rng = random.Random(1000 + b)
                lens = [rng.randint(1, 100 if RUN.smoke else 8192) for _ in range(b)]
                name = f"mixed {lay} b{b} len1-8192"
                fl = "flex" not in skip and (flex_all or name in fmixed)
                if flex_only and not fl:
                    continue
                cases.append((name, b, hq, hkv, lens, b in (16, 64) and lay == "gqa" or (b == 16 and lay == "mha"), fl))
    if flex_only:  # longest contexts first (mixed after the 8,192 ones): they matter most if the budget runs out
        cases.sort(key=lambda c: (-max(c[4]), c[1]))
    return cases


def prefill_cases() -> list[tuple]:
    """(name, batch, q heads, KV heads, context, new tokens, swept with --sweep) of the prefill cases."""
    cases = [
        ("prefill mha 4x2048 ctx0", 4, 32, 32, 0, 2048, True),
        ("prefill mha 4x1024 ctx3072", 4, 32, 32, 3072, 1024, True),
        ("prefill gqa 4x1024 ctx3072", 4, 32, 8, 3072, 1024, False),
        ("chunked mha 16x256 ctx1792", 16, 32, 32, 1792, 256, False),
    ]
    if RUN.smoke:
        cases = [
            ("prefill mha 2x40 ctx0", 2, 4, 4, 0, 40, True),
            ("prefill gqa 2x20 ctx33", 2, 4, 2, 33, 20, False),
        ]
    return cases


def write_kv_cases() -> list[tuple[int, int]]:
    """(tokens, KV heads) of the ``write_kv`` cases."""
    return [(256, 8), (8192, 8), (65536, 8), (8192, 32)] if not RUN.smoke else [(16, 2)]


def copy_blocks_cases() -> list[tuple[int, int]]:
    """(layers, block pairs) of the ``copy_blocks`` cases."""
    return [(32, 256)] if not RUN.smoke else [(2, 4)]


def sliding_window_decode_cases(quick: bool) -> list[tuple]:
    """(name, batch, q heads, KV heads, lengths, window) of the sliding-window decode cases
    (``python -m kernels.bench sliding-window``). The first three read about 1.07 GB of window K/V each (the window's
    keys x KV heads x 128 x 2 bytes x K and V); the gpt-oss-like one reads less, the mixed one about 1.9 GB."""
    if RUN.smoke:
        return [
            ("swd gqa b3 ctx40 W12", 3, 4, 2, [40, 40, 40], 12),
            ("swd mixed mha b4 W20", 4, 2, 2, [5, 33, 70, 0], 20),
        ]
    rng = random.Random(4096)
    cases = [
        ("decode gqa32/8 b64 ctx16384 W4096", 64, 32, 8, [16384] * 64, 4096),  # Mistral-like window
        ("decode gqa32/16 b128 ctx8192 W1024", 128, 32, 16, [8192] * 128, 1024),  # Gemma-3-like window
        ("decode mha32 b64 ctx8192 W1024", 64, 32, 32, [8192] * 64, 1024),
        ("decode gqa64/8 b512 ctx4096 W128", 512, 64, 8, [4096] * 512, 128),  # gpt-oss-like window (head 128 here)
        ("decode mixed gqa32/8 b128 len1-16384 W4096", 128, 32, 8, [rng.randint(1, 16384) for _ in range(128)], 4096),
    ]
    return [cases[i] for i in (0, 1, 4)] if quick else cases


def sliding_window_prefill_cases(quick: bool) -> list[tuple]:
    """(name, batch, q heads, KV heads, context, new tokens, window) of the sliding-window prefill cases. The two
    chunked cases read about 1.2 and 1.07 GB of distinct window K/V (the keys some new token sees)."""
    if RUN.smoke:
        return [
            ("swp chunked gqa 2x20 ctx45 W16", 2, 4, 2, 45, 20, 16),
            ("swp prefill mha 2x40 ctx0 W7", 2, 2, 2, 0, 40, 7),
        ]
    cases = [
        ("chunked gqa32/8 64x512 ctx8192 W4096", 64, 32, 8, 8192, 512, 4096),
        ("chunked gqa32/16 64x1024 ctx15360 W1024", 64, 32, 16, 15360, 1024, 1024),
        ("prefill gqa32/8 8x4096 ctx0 W1024", 8, 32, 8, 0, 4096, 1024),
    ]
    return cases[:2] if quick else cases


def sliding_window_fp8_decode_cases(quick: bool) -> list[tuple]:
    """(name, batch, q heads, KV heads, lengths, window) of the fp8-KV decode cases: each reads about 1.06-1.07 GB of
    fp8 window K/V (twice the batch of the bf16 cases, or more), while the bf16 copies the baselines read stay under
    ``MAX_BYTES`` with the cache."""
    if RUN.smoke:
        return [("swd fp8 gqa b3 ctx40 W12", 3, 4, 2, [40, 40, 37], 12)]
    rng = random.Random(4096)
    mixed = [rng.randint(1, 16384) for _ in range(144)]
    cases = [
        ("decode fp8 gqa32/8 b128 ctx16384 W4096", 128, 32, 8, [16384] * 128, 4096),
        ("decode fp8 gqa32/16 b256 ctx4096 W1024", 256, 32, 16, [4096] * 256, 1024),
        ("decode fp8 mixed gqa32/8 b144 len1-16384 W4096", 144, 32, 8, mixed, 4096),
    ]
    return cases[:1] if quick else cases


def sliding_window_fp8_prefill_cases(quick: bool) -> list[tuple]:
    """(name, batch, q heads, KV heads, context, new tokens, window) of the fp8-KV prefill case: 1.21 GB of distinct
    fp8 window K/V."""
    if RUN.smoke:
        return [("swp fp8 chunked gqa 2x20 ctx45 W16", 2, 4, 2, 45, 20, 16)]
    return [("chunked fp8 gqa32/8 128x512 ctx8192 W4096", 128, 32, 8, 8192, 512, 4096)]
