"""The Triton prefill kernels' default tiles and option rules (kernels/attention/prefill_plan.py). Host arithmetic
only: no kernel runs."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.attention import prefill_plan  # noqa: E402

from .test_prefill import WIDE  # noqa: E402


def test_lazy_tau_rule():
    # True means 8; capped at 8 for 16-bit dtypes (P is rounded to them) and 32 for fp32; off without a positive
    # scale or with the unfolded scale (those steps have no lazy form)
    assert prefill_plan.lazy_tau(0.1, {"lazy_rescale": True}, torch.float16) == 8.0
    assert prefill_plan.lazy_tau(0.1, {"lazy_rescale": 20}, torch.bfloat16) == 8.0
    assert prefill_plan.lazy_tau(0.1, {"lazy_rescale": 20}, torch.float32) == 20.0
    assert prefill_plan.lazy_tau(0.1, {"lazy_rescale": 99}, torch.float32) == 32.0
    assert prefill_plan.lazy_tau(0.1, {}, torch.float16) == 0.0
    assert prefill_plan.lazy_tau(-0.1, {"lazy_rescale": True}, torch.float16) == 0.0
    assert prefill_plan.lazy_tau(0.1, {"lazy_rescale": True, "fold_scale": False}, torch.float16) == 0.0


def test_prefill_default_shapes(monkeypatch):
    # The GPU rule (the interpreter always takes its small tiles), from the H100 A/B (reports/kernels/README.md): the
    # paged kernel goes wide from 128 new tokens; the new-K/V path only with a positive context hint as well; head sizes
    # padded to 256 or 64 keep their old shapes.
    monkeypatch.setattr(prefill_plan, "interpreting", lambda: False)
    bf16 = torch.bfloat16
    assert prefill_plan.prefill_config(128, bf16, 128) == WIDE
    assert prefill_plan.prefill_config(128, bf16, 4096) == WIDE
    assert prefill_plan.prefill_config(128, bf16, 127) == dict(block_m=64, block_n=64, num_warps=4, num_stages=3)
    assert prefill_plan.prefill_config(64, bf16, 4096)["block_m"] == 64
    assert prefill_plan.prefill_config(256, bf16, 4096) == dict(block_m=64, block_n=32, num_warps=4, num_stages=2)
    assert prefill_plan.prefill_config(128, torch.float16, 4096) == WIDE
    # fp32 keeps 64-row tiles: 128 x 128 fp32 tiles in 3 stages need 262 KB of shared memory (the H100 has 227 KB)
    assert prefill_plan.prefill_config(128, torch.float32, 4096)["block_m"] == 64
    assert prefill_plan.prefill_newkv_config(128, torch.float32, 1024, 3072)["block_m"] == 64
    nk = prefill_plan.prefill_newkv_config
    assert {k: nk(128, bf16, 1024, 3072)[k] for k in WIDE} == WIDE
    assert nk(128, bf16, 128, 1)["block_m"] == 128
    assert nk(128, bf16, 2048, 0)["block_m"] == 64  # pure prefill
    assert nk(128, bf16, 2048, None)["block_m"] == 64  # no hint
    assert nk(128, bf16, 127, 3072)["block_m"] == 64  # short prompt
    assert nk(128, bf16, 1024, 3072)["tma"] is True
