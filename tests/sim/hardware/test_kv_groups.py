"""KV-cache groups (sim.hardware.kv_groups): vLLM's grouping of layers by attention kind, bytes per token per layer
under tensor parallelism, the uniform page and the blocks it gives; every expected value is worked out by hand in the
comments."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.errors import UserError
from sim.hardware.budget import kv_budget
from sim.hardware.gpus import resolve_gpu
from sim.hardware.kv_groups import FULL, MLA, SLIDING_WINDOW, check_tp, kv_groups, kv_layout, layer_kinds
from sim.hardware.model_spec import ModelSpec
from sim.hardware.models import resolve_model
from sim.units import GiB


def dense(layers=4, kv_heads=8, head=64, heads=32, max_len=4096, kv="bf16", **extra) -> ModelSpec:
    hidden = heads * head
    return ModelSpec(
        "toy", layers, hidden, heads, kv_heads, head, 4 * hidden, 32000, 10**9, max_len, kv, "bf16", **extra
    )


# --- grouping -----------------------------------------------------------------------------------------------------


def test_gpt_oss_20b_is_two_groups_of_twelve_layers() -> None:
    # 24 layers alternating sliding (even) and full (odd), window 128: buckets of 12 and 12, 12 < 1.5 x 12, so the
    # group size is 12: one sliding group (layers 0, 2, ..., 22) and one full group (1, 3, ..., 23), sliding first
    # (layer 0 is sliding), no padding.
    model = resolve_model("gpt-oss-20b")
    layout = kv_layout(model)
    assert [(g.kind, g.window, g.num_layers) for g in layout.groups] == [(SLIDING_WINDOW, 128, 12), (FULL, None, 12)]
    assert layout.groups[0].layers == tuple(range(0, 24, 2))
    assert layout.groups[1].layers == tuple(range(1, 24, 2))
    assert layout.group_size == 12 and layout.padding_layers == 0
    # 8 KV heads x 64 x 2 (K, V) x 2 B (bf16) = 2,048 B per token per layer
    assert [g.bytes_per_token_per_layer() for g in layout.groups] == [2048, 2048]
    # one slot of a block: 12 layers x 2,048 = 24,576 B; a 16-token block 393,216 B
    assert layout.slot_bytes() == 24_576 and layout.page_bytes(16) == 393_216
    # all real layers: 24 x 2,048 = 49,152 B, the ModelSpec figure
    assert layout.bytes_per_token() == 49_152 == model.kv_bytes_per_token()
    assert layout.groups[0].label == "sliding_window(128)" and layout.is_hybrid


def test_gemma_3_27b_pads_its_sliding_groups() -> None:
    # 62 layers, every 6th global: 10 full (5, 11, ..., 59) and 52 sliding. 52 >= 1.5 x 10, so the group size is 10
    # (vLLM's n:1 rule): the full bucket is one group of 10; the sliding bucket ceil(52 / 10) = 6 groups, layer j of
    # the bucket in group j mod 6: 52 = 6 x 8 + 4, so groups of 9, 9, 9, 9, 8, 8; padding 7 x 10 - 62 = 8.
    model = resolve_model("gemma-3-27b")
    layout = kv_layout(model)
    assert [g.num_layers for g in layout.groups] == [9, 9, 9, 9, 8, 8, 10]
    assert [g.kind for g in layout.groups] == [SLIDING_WINDOW] * 6 + [FULL]
    assert all(g.window == 1024 for g in layout.groups[:6])
    assert layout.groups[6].layers == tuple(range(5, 62, 6))
    # the sliding bucket is 0, 1, 2, 3, 4, 6, 7, ...: its elements 0, 6, 12 are layers 0, 7, 14
    assert layout.groups[0].layers[:3] == (0, 7, 14)
    assert sorted(i for g in layout.groups for i in g.layers) == list(range(62))
    assert layout.group_size == 10 and layout.padding_layers == 8
    # 16 KV heads x 128 x 2 x 2 B = 8,192 B per token per layer; a slot of a block: 10 x 8,192 = 81,920 B
    assert layout.slot_bytes() == 81_920
    # real layers: 62 x 8,192 = 507,904 B (padding excluded)
    assert layout.bytes_per_token() == 507_904 == model.kv_bytes_per_token()


def test_the_design_docs_ten_full_twenty_sliding_model() -> None:
    # vLLM's docs/design/hybrid_kv_cache_manager.md, case 2: 10 full and 20 sliding layers. 20 >= 1.5 x 10: group
    # size 10, so 3 groups of 10 (full first here, as layer 0 is full), no padding.
    types = tuple("full_attention" if i % 3 == 0 else "sliding_attention" for i in range(30))
    layout = kv_layout(dense(layers=30, sliding_window=32, layer_types=types))
    assert [(g.kind, g.num_layers) for g in layout.groups] == [(FULL, 10), (SLIDING_WINDOW, 10), (SLIDING_WINDOW, 10)]
    assert layout.group_size == 10 and layout.padding_layers == 0


def test_near_equal_buckets_take_the_larger_group_size() -> None:
    # 12 sliding + 13 full (gpt-oss-20b with an eagle layer, vLLM's own example): 13 < 1.5 x 12, so group size 13
    # and two groups (12 + 1 padding, 13), not 12 with the full bucket split in two.
    types = ("sliding_attention", "full_attention") * 12 + ("full_attention",)
    layout = kv_layout(dense(layers=25, sliding_window=128, layer_types=types))
    assert [(g.kind, g.num_layers) for g in layout.groups] == [(SLIDING_WINDOW, 12), (FULL, 13)]
    assert layout.group_size == 13 and layout.padding_layers == 1


def test_a_model_of_one_kind_is_one_group_and_keeps_every_figure() -> None:
    # Llama-2-7B: one full group of 32 layers; a block is 16 x 524,288 B, as kv_budget's
    model = resolve_model("llama-2-7b")
    layout = kv_layout(model)
    assert [(g.kind, g.num_layers) for g in layout.groups] == [(FULL, 32)] and not layout.is_hybrid
    for tp in (1, 2, 4):
        assert layout.slot_bytes(tp) == model.kv_bytes_per_token(tp)
        budget = kv_budget(model, None, 16, kv_memory=12 * GiB, tp=tp)
        assert layout.page_bytes(16, tp) == budget.block_bytes
        assert layout.num_blocks(12 * GiB, 16, tp) == budget.num_blocks


def test_mistral_v01_slides_on_every_layer() -> None:
    # Mistral-7B v0.1: 32 layers, window 4096 on every layer (sliding_window set, no layer_types): one sliding group
    model = dense(layers=32, kv_heads=8, head=128, max_len=32768, sliding_window=4096)
    assert layer_kinds(model) == (SLIDING_WINDOW,) * 32
    (group,) = kv_groups(model)
    assert (group.kind, group.window, group.num_layers) == (SLIDING_WINDOW, 4096, 32)
    # 2 x 32 x 8 x 128 x 2 B = 131,072 B per token, as ModelSpec counts it
    assert kv_layout(model).slot_bytes() == 131_072 == model.kv_bytes_per_token()


# --- tensor parallelism and dtypes --------------------------------------------------------------------------------


def test_kv_heads_split_over_tp_and_replicate_below_one_per_gpu() -> None:
    group = kv_groups(dense(kv_heads=8, heads=64, head=128))[0]
    # 8 heads: tp 1 -> 8, tp 4 -> 2, tp 8 -> 1, tp 16 -> max(1, 8 // 16) = 1 (replicated)
    assert [group.kv_heads_per_gpu(tp) for tp in (1, 4, 8, 16)] == [8, 2, 1, 1]
    # bytes per token per layer: 2 x heads x 128 x 2 B
    assert [group.bytes_per_token_per_layer(tp) for tp in (1, 4, 8, 16)] == [4096, 1024, 512, 512]


def test_tp_must_divide_the_kv_heads_or_be_a_multiple_of_them() -> None:
    model = dense(kv_heads=8, heads=64)
    for tp in (1, 2, 8, 16):
        check_tp(model, tp)
    with pytest.raises(UserError, match="--tp 3 does not divide the 8 KV heads"):
        check_tp(model, 3)
    with pytest.raises(UserError, match="--tp must be a positive integer"):
        check_tp(model, 0)
    check_tp(resolve_model("deepseek-v3"), 3)  # MLA: the latent is replicated, any tp


def test_deepseek_v3_mla_latent_is_replicated_and_sizes_the_cache_at_tp8() -> None:
    model = resolve_model("deepseek-v3")
    layout = kv_layout(model)
    (group,) = layout.groups
    assert (group.kind, group.window, group.num_layers) == (MLA, None, 61)
    # one latent of 512 + 64 values x 2 B (bf16) = 1,152 B per token per layer, whatever tp (not split over GPUs)
    assert group.bytes_per_token_per_layer(1) == group.bytes_per_token_per_layer(8) == 1152
    # 61 layers x 1,152 = 70,272 B per token on each of the 8 GPUs
    assert layout.slot_bytes(8) == 70_272 == model.kv_bytes_per_token(8)
    # 60 GiB of KV memory on an 80 GiB H100: 64,424,509,440 B // (16 x 70,272 = 1,124,352 B) = 57,299 blocks
    # (1,124,352 x 57,299 = 64,424,245,248 <= 64,424,509,440 < + 1,124,352), i.e. 57,299 x 16 = 916,784 tokens
    assert layout.num_blocks(60 * GiB, 16, tp=8) == 57_299
    assert layout.num_blocks(60 * GiB, 16, tp=8) * 16 == 916_784
    budget = kv_budget(model, resolve_gpu("h100-80gb"), 16, kv_memory=60 * GiB, tp=8)
    assert (budget.num_blocks, budget.bytes_per_token) == (57_299, 70_272)


def test_fp8_halves_the_bytes() -> None:
    # gpt-oss-20b with an fp8 KV cache: 2 x 8 x 64 x 1 B = 1,024 B per token per layer (bf16: 2,048)
    layout = kv_layout(resolve_model("gpt-oss-20b", kv_cache_dtype="fp8"))
    assert [g.bytes_per_token_per_layer() for g in layout.groups] == [1024, 1024]
    assert layout.slot_bytes() == 12_288
    # DeepSeek-V3 fp8: 576 x 1 B x 61 = 35,136 B per token; 60 GiB holds 64,424,509,440 // 562,176 = 114,598 blocks
    mla = kv_layout(resolve_model("deepseek-v3", kv_cache_dtype="fp8"))
    assert mla.slot_bytes(8) == 35_136
    assert mla.num_blocks(60 * GiB, 16, tp=8) == 114_598


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"sliding_window": 0}, "sliding window must be a positive"),
        ({"sliding_window": -5}, "sliding window must be a positive"),
        ({"sliding_window": 8192}, "larger than the max model length 4,096"),
        ({"layer_types": ("full_attention",) * 3}, "lists 3 layers but the model has 4"),
        ({"layer_types": ("full_attention", "local", "full_attention", "full_attention")}, "unknown layer types"),
        ({"layer_types": ("sliding_attention",) * 4}, "no sliding_window is given"),
        ({"kv_lora_rank": 512}, "needs qk_rope_head_dim"),
        ({"qk_rope_head_dim": 64}, "kv_lora_rank is 0"),
        ({"kv_lora_rank": -1, "qk_rope_head_dim": 64}, "must not be negative"),
        ({"kv_lora_rank": 512, "qk_rope_head_dim": 64, "sliding_window": 128}, "sliding-window MLA"),
    ],
)
def test_bad_model_descriptions_are_user_errors(extra, message) -> None:
    with pytest.raises(UserError, match=message):
        kv_layout(dense(**extra))


def test_no_layers_is_a_user_error() -> None:
    with pytest.raises(UserError, match="number of layers must be positive"):
        kv_layout(replace(dense(), num_layers=0))


def test_window_equal_to_the_max_model_length_is_accepted() -> None:
    assert kv_groups(dense(sliding_window=4096))[0].window == 4096
