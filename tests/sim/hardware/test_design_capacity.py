"""A model's KV design against full-attention KV (sim.hardware.design_capacity): bytes per token and requests held,
worked out by hand in the comments."""

from __future__ import annotations

import pytest

from sim.hardware.design_capacity import design_capacity, design_pages_per_request, full_attention_bytes_per_token
from sim.hardware.model_spec import ModelSpec
from sim.hardware.models import resolve_model
from sim.units import GiB


def toy(layers=4, kv_heads=2, head=8, **extra) -> ModelSpec:
    return ModelSpec("toy", layers, 64, 8, kv_heads, head, 256, 1000, 10**6, 4096, "bf16", "bf16", **extra)


def test_deepseek_v3_full_attention_kv_is_k_and_v_of_every_head() -> None:
    model = resolve_model("deepseek-v3")
    # 61 layers, 128 heads; K = qk_nope 128 + qk_rope 64 = 192 values, V = v_head_dim 128; bf16 (2 B)
    assert full_attention_bytes_per_token(model, tp=1) == 61 * 128 * (192 + 128) * 2 == 4_997_120
    # tp=8 splits the heads: 16 per GPU -> 61 x 16 x 320 x 2 = 624,640 B
    assert full_attention_bytes_per_token(model, tp=8) == 624_640
    # the latent every GPU holds: 61 x (512 + 64) x 2 = 70,272 B
    assert model.kv_bytes_per_token(8) == 70_272


def test_deepseek_v3_at_tp8_holds_about_nine_times_the_requests() -> None:
    model = resolve_model("deepseek-v3")
    # 10 GiB = 10,737,418,240 B; requests of 1,000 tokens in blocks of 16: ceil(1000 / 16) = 63 blocks each.
    # Full attention: blocks of 16 x 624,640 = 9,994,240 B; 10,737,418,240 // 9,994,240 = 1,074 blocks; 1,074 // 63
    # = 17 requests. MLA: pages of 16 x 70,272 = 1,124,352 B; 10,737,418,240 // 1,124,352 = 9,549 pages; 9,549 // 63
    # = 151 requests (151 / 17 = 8.88x).
    cap = design_capacity(model, 10 * GiB, 16, 1000, tp=8)
    assert (cap.full_attention_requests, cap.design_requests) == (17, 151)
    assert cap.gain == pytest.approx(151 / 17)
    assert cap.design_bytes_per_request == 63 * 1_124_352
    assert cap.full_attention_bytes_per_request == 63 * 9_994_240


def test_gpt_oss_20b_keeps_nine_sliding_pages_per_request() -> None:
    model = resolve_model("gpt-oss-20b")
    # 24 layers x 8 KV heads x (64 + 64) x 2 B = 49,152 B per token with full attention (paged's figure)
    assert full_attention_bytes_per_token(model) == 49_152 == model.kv_bytes_per_token()
    # 1,370 tokens -> ceil(1370 / 16) = 86 pages in the full group; the sliding group (window 128) at most
    # ceil((128 + 15) / 16) = 9 -> 95 pages of 16 x 24,576 B = 393,216 B
    assert design_pages_per_request(model, 1370, 16) == 95
    # 1 GiB = 1,073,741,824 B: 2,730 pages (1,073,741,824 // 393,216), 2,730 // 95 = 28 requests; full attention:
    # blocks of 16 x 49,152 = 786,432 B, 1,365 blocks, 1,365 // 86 = 15 requests
    cap = design_capacity(model, GiB, 16, 1370)
    assert (cap.design_requests, cap.full_attention_requests) == (28, 15)


def test_a_short_request_keeps_all_its_pages_in_the_sliding_group() -> None:
    model = resolve_model("gpt-oss-20b")
    # 100 tokens: ceil(100 / 16) = 7 pages in each group (less than the window's 9)
    assert design_pages_per_request(model, 100, 16) == 14


def test_a_two_group_toy_with_window_w() -> None:
    # 4 layers alternating sliding (window 10) and full: 2 groups of 2 layers; 2 KV heads x 8 x 2 (K, V) x 2 B = 64 B
    # per token per layer; a page slot = 2 layers x 64 = 128 B; blocks of 4 tokens: page 512 B.
    model = toy(sliding_window=10, layer_types=("sliding_attention", "full_attention") * 2)
    assert full_attention_bytes_per_token(model) == 4 * 64 == 256
    # 40 tokens: full group 10 pages; sliding ceil((10 + 3) / 4) = 4 pages -> 14 pages
    assert design_pages_per_request(model, 40, 4) == 14
    # 7,168 B: 14 pages -> 1 request; full attention: blocks of 4 x 256 = 1,024 B, 7 blocks, 10 per request -> 0
    cap = design_capacity(model, 7168, 4, 40)
    assert (cap.design_requests, cap.full_attention_requests, cap.gain) == (1, 0, None)


def test_a_model_of_one_full_kind_is_its_own_full_attention() -> None:
    model = toy()
    cap = design_capacity(model, 1 << 20, 16, 300)
    assert cap.design_requests == cap.full_attention_requests and cap.gain == 1
    # 4 layers x 2 heads x 16 x 2 B = 256 B per token; 300 tokens -> 19 blocks of 4,096 B; 1 MiB = 256 blocks -> 13
    assert cap.design_requests == 256 // 19 == 13


def test_v_head_dim_zero_means_head_size() -> None:
    assert full_attention_bytes_per_token(toy(head=8, v_head_dim=0)) == 4 * 2 * 16 * 2
    assert full_attention_bytes_per_token(toy(head=8, v_head_dim=4)) == 4 * 2 * 12 * 2


@pytest.mark.parametrize("tokens, block", [(0, 16), (10, 0)])
def test_bad_lengths_are_refused(tokens, block) -> None:
    with pytest.raises(ValueError):
        design_capacity(toy(), 1 << 20, block, tokens)
