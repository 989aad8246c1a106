"""KV-cache groups through the replay (sim.serving.replay): the hybrid allocators get the model's groups and a budget
in pages of its layout, steps.csv gains per-group columns and summary.json `kv_groups` only for them, bad layouts
are refused up front, and a model of one attention kind replays exactly as through `paged`. Expected values are
worked out by hand in the comments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.model_spec import ModelSpec
from sim.hardware.models import resolve_model
from sim.records.steps import STEP_COLUMNS, group_columns, steps_csv
from sim.serving.replay import ReplayOptions, make_allocator, replay, validate_options
from sim.traces.model import Trace

MiB = 2**20
H100 = resolve_gpu("h100-80gb")

# 4 layers, sliding (window 32) and full alternating, 2 KV heads of 64 values in bf16: 2 x 2 x 64 x 2 B = 512 B per
# token per layer; every layer: 2,048 B per token. Two groups of 2 layers: a page slot is 2 x 512 = 1,024 B.
TWO_GROUPS = ModelSpec(
    name="two-groups",
    num_layers=4,
    hidden_size=256,
    num_q_heads=4,
    num_kv_heads=2,
    head_size=64,
    intermediate_size=1024,
    vocab_size=1000,
    num_params=10_000_000,
    max_model_len=1024,
    kv_dtype="bf16",
    weight_dtype="bf16",
    sliding_window=32,
    layer_types=("sliding_attention", "full_attention") * 2,
)


def options(model, allocator: str, **kw) -> ReplayOptions:
    return ReplayOptions(model, kw.pop("gpu", H100), allocator, **kw)


def small_trace(seed: int = 0, count: int = 40) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(
        "<groups>",
        "native",
        np.sort(rng.exponential(0.01, count).cumsum()),
        rng.integers(100, 500, count),
        rng.integers(20, 200, count),
    )


# --- the budget ------------------------------------------------------------------------------------------------------


def test_a_two_group_budget_is_counted_in_pages_of_the_layout() -> None:
    # 1 MiB: paged blocks of 16 x 2,048 B = 32,768 B -> 32 blocks; pages of 16 x 1,024 B = 16,384 B -> 64 pages
    paged = options(TWO_GROUPS, "paged", kv_memory=MiB).budget()
    hybrid = options(TWO_GROUPS, "paged-hybrid", kv_memory=MiB).budget()
    assert (paged.num_blocks, paged.bytes_per_token, paged.layout) == (32, 2048, None)
    assert (hybrid.num_blocks, hybrid.bytes_per_token) == (64, 1024)
    assert hybrid.capacity_bytes == paged.capacity_bytes == MiB
    assert [g.label for g in hybrid.layout.groups] == ["sliding_window(32)", "full"]
    # a request of 1,024 tokens decoding: 64 blocks in the full group and ceil((32 + 16 - 1) / 16) = 3 in the
    # sliding group (the window and the current token's block): 64 / 67 = 0.96x; paged: 32 / 64 blocks = 0.50x
    assert hybrid.blocks_per_request(1024) == 67 and paged.blocks_per_request(1024) == 64
    assert hybrid.describe(TWO_GROUPS) == (
        "KV cache: 64 pages x 16 tokens = 1,024 page slots (1.00 MiB) in 2 KV-cache groups (sliding_window(32) x2 "
        "layers, full x2 layers); every token takes a slot in each group; max concurrency at 1,024 tokens per "
        "request, sliding groups holding their window: 0.96x"
    )
    assert paged.describe(TWO_GROUPS).startswith("KV cache: 32 blocks x 16 tokens = 512 tokens (1.00 MiB);")
    allocator = make_allocator(options(TWO_GROUPS, "paged-hybrid", kv_memory=MiB), hybrid)
    assert [(g.kind, g.window) for g in allocator.groups] == [("sliding_window", 32), ("full", None)]
    assert allocator.num_blocks == 64


def test_gpt_oss_20b_on_an_h100_gets_twice_the_pages_of_half_the_bytes() -> None:
    # 24 layers of 2 x 8 x 64 x 2 B = 2,048 B; 2 groups of 12: a slot is 24,576 B, paged's token 49,152 B.
    # KV memory (derived, as `sim compare` prints it): 57.12 GiB; both get the same bytes, rounded to their blocks.
    model = resolve_model("gpt-oss-20b")
    paged = options(model, "paged").budget()
    hybrid = options(model, "paged-hybrid").budget()
    assert hybrid.requested_bytes == paged.requested_bytes
    assert paged.num_blocks == paged.requested_bytes // (16 * 49_152) == 77_986
    assert hybrid.num_blocks == paged.requested_bytes // (16 * 24_576) == 155_972
    # at 131,072 tokens: 8,192 blocks in the full group + ceil(143 / 16) = 9 in the sliding group
    assert hybrid.blocks_per_request(131_072) == 8_201


def test_deepseek_v3_at_tp8_is_one_mla_group_with_the_budget_of_paged() -> None:
    # MLA: (512 + 64) x 61 layers x 2 B = 70,272 B per token on every GPU, whatever tp; one group, so the same blocks
    model = resolve_model("deepseek-v3")
    gpu = resolve_gpu("h200")
    paged = options(model, "paged", gpu=gpu, tp=8).budget()
    hybrid = options(model, "paged-hybrid", gpu=gpu, tp=8).budget()
    assert paged.bytes_per_token == hybrid.bytes_per_token == 70_272
    assert paged.num_blocks == hybrid.num_blocks
    assert hybrid.describe(model) == paged.describe(model)
    # fp8 halves it: 576 x 61 x 1 B = 35,136 B
    fp8 = options(resolve_model("deepseek-v3", kv_cache_dtype="fp8"), "paged-hybrid", gpu=gpu, tp=8).budget()
    assert fp8.bytes_per_token == 35_136


# --- records ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_oss_runs():
    """gpt-oss-20b (max length 2,048) in 100 pages' worth of KV memory (50 paged blocks): memory binds."""
    model = resolve_model("gpt-oss-20b", max_model_len=2048)
    kv = 100 * 16 * 24_576
    trace = small_trace()
    return {a: replay(trace, options(model, a, kv_memory=kv)) for a in ("paged", "paged-hybrid")}


def test_per_group_columns_sum_to_the_totals(gpt_oss_runs) -> None:
    hybrid = gpt_oss_runs["paged-hybrid"].steps
    assert set(hybrid) == set(STEP_COLUMNS) | set(group_columns(2))
    for category in ("token_states", "reserved", "internal_fragmentation"):
        total = hybrid[f"g0_{category}_bytes"] + hybrid[f"g1_{category}_bytes"]
        assert np.array_equal(total, hybrid[f"{category}_bytes"]), category
    assert not hybrid["g1_window_freed_bytes"].any()  # group 1 is full attention
    assert hybrid["g0_window_freed_bytes"].max() > 0  # prompts of 100+ tokens leave a 128-token window
    # every figure is a whole number of 24,576-byte slots
    for name in group_columns(2):
        assert not (hybrid[name] % 24_576).any(), name
    header = steps_csv(gpt_oss_runs["paged-hybrid"].steps).splitlines()[0].split(",")
    assert header == [*STEP_COLUMNS, *group_columns(2)]
    assert group_columns(1) == (
        "g0_token_states_bytes",
        "g0_reserved_bytes",
        "g0_internal_fragmentation_bytes",
        "g0_window_freed_bytes",
    )


def test_a_run_without_groups_keeps_its_columns_and_summary(gpt_oss_runs) -> None:
    paged = gpt_oss_runs["paged"]
    assert set(paged.steps) == set(STEP_COLUMNS)
    assert steps_csv(paged.steps).splitlines()[0] == ",".join(STEP_COLUMNS)
    assert "kv_groups" not in paged.summary and "kv_group_size" not in paged.summary["config"]


def test_the_summary_describes_each_group(gpt_oss_runs) -> None:
    result = gpt_oss_runs["paged-hybrid"]
    s = result.summary
    # 100 pages x 16 slots x 24,576 B
    assert s["kv_capacity_bytes"] == 100 * 16 * 24_576 and s["kv_blocks"] == 100
    assert s["config"]["kv_bytes_per_token"] == 24_576
    assert (s["config"]["kv_group_size"], s["config"]["kv_padding_layers"]) == (12, 0)
    sliding, full = s["kv_groups"]
    assert (sliding["kind"], sliding["window"], full["kind"], full["window"]) == ("sliding_window", 128, "full", None)
    assert sliding["layers"] == list(range(0, 24, 2)) and full["layers"] == list(range(1, 24, 2))
    for g in (sliding, full):
        assert g["num_layers"] == 12
        assert g["bytes_per_token_per_layer"] == 2 * 8 * 64 * 2 == 2_048
        assert g["bytes_per_token"] == 12 * 2_048
    for i, g in enumerate(s["kv_groups"]):
        for category, fraction in g["kv_memory"].items():
            assert fraction == pytest.approx(np.mean(result.steps[f"g{i}_{category}_bytes"]) / s["kv_capacity_bytes"])
    for category in ("token_states", "reserved", "internal_fragmentation"):
        assert sum(g["kv_memory"][category] for g in s["kv_groups"]) == pytest.approx(s["kv_memory"][category])
    assert full["kv_memory"]["window_freed"] == 0.0 < sliding["kv_memory"]["window_freed"]


def test_the_window_holds_more_sequences_when_memory_binds(gpt_oss_runs) -> None:
    paged, hybrid = gpt_oss_runs["paged"].summary, gpt_oss_runs["paged-hybrid"].summary
    assert paged["requests"]["preemptions"] > hybrid["requests"]["preemptions"]
    assert hybrid["batch_size"]["mean"] > paged["batch_size"]["mean"]


def test_fast_forward_writes_the_group_columns_of_the_step_by_step_run() -> None:
    model = resolve_model("gpt-oss-20b", max_model_len=2048)
    trace = small_trace(seed=3, count=25)
    fast, slow = (
        replay(trace, options(model, "paged-hybrid", kv_memory=80 * 16 * 24_576, fast_forward=f)) for f in (True, False)
    )
    assert fast.summary["iterations_fast_forwarded"] > 0
    for name in group_columns(2):
        assert np.array_equal(fast.steps[name], slow.steps[name]), name
    assert fast.summary["kv_groups"] == slow.summary["kv_groups"]


def test_a_model_of_one_kind_replays_through_paged_hybrid_as_through_paged() -> None:
    """One full group: the same blocks, the same figures; only the allocator's name and the group records differ."""
    rng = np.random.default_rng(5)
    count = 60
    trace = Trace(
        "<one-group>",
        "native",
        np.sort(rng.exponential(0.02, count).cumsum()),
        rng.integers(1, 600, count),
        rng.integers(1, 300, count),
        columns={
            "n": rng.choice([1, 1, 2], count),
            "beam_width": np.where(rng.random(count) < 0.1, 2, 1),
            "prefix_group": rng.integers(-1, 2, count),
            "prefix_tokens": np.full(count, 200),
        },
    )
    trace.columns["prefix_tokens"] = np.minimum(trace.prompt_tokens, 200)
    model = resolve_model("llama-3-8b")
    for base, grouped in (("paged", "paged-hybrid"), ("paged-prefix-cache", "paged-hybrid-prefix-cache")):
        a, b = (replay(trace, options(model, x, kv_memory=200 * 16 * 131_072)) for x in (base, grouped))
        assert a.summary["requests"]["preemptions"] > 0  # memory binds
        sa, sb = dict(a.summary), dict(b.summary)
        assert (sa.pop("allocator"), sb.pop("allocator")) == (base, grouped)
        groups = sb.pop("kv_groups")
        assert [(g["kind"], g["num_layers"], g["bytes_per_token"]) for g in groups] == [("full", 32, 131_072)]
        sb["config"] = dict(sb["config"])
        assert (sb["config"].pop("kv_group_size"), sb["config"].pop("kv_padding_layers")) == (32, 0)
        assert sa == sb
        for name in STEP_COLUMNS:
            assert np.array_equal(a.steps[name], b.steps[name]), name
        assert np.array_equal(b.steps["g0_token_states_bytes"], b.steps["token_states_bytes"])


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(max_model_len=16), "the sliding window of 32 tokens is larger than the max model length 16"),
        (dict(sliding_window=0), "the sliding window must be a positive number of tokens, got 0"),
        (dict(layer_types=("sliding_attention", "full_attention")), "the layer pattern lists 2 layers but the model"),
        (dict(layer_types=("sliding_attention",) * 3 + ("global",)), "unknown layer types ['global']"),
        (dict(sliding_window=None, layer_types=(), kv_lora_rank=512), "needs qk_rope_head_dim"),
        (dict(sliding_window=None, layer_types=(), qk_rope_head_dim=64), "kv_lora_rank is 0"),
        (dict(kv_lora_rank=512, qk_rope_head_dim=64), "sliding-window MLA is not modelled"),
    ],
)
def test_a_bad_layout_is_refused_up_front(change, message) -> None:
    model = replace(TWO_GROUPS, **change)
    with pytest.raises(UserError) as exc:
        validate_options(options(model, "paged-hybrid", kv_memory=MiB))
    assert message in str(exc.value)
    if "max model length" not in message:  # a malformed layout is malformed for every allocator
        with pytest.raises(UserError):
            validate_options(options(model, "paged", kv_memory=MiB))


def test_a_window_beyond_the_max_length_is_refused_only_where_windows_are_used() -> None:
    short = replace(TWO_GROUPS, max_model_len=16)
    validate_options(options(short, "paged", kv_memory=MiB))  # paged keeps every layer in full: no window used
    with pytest.raises(UserError, match="larger than the max model length"):
        replay(small_trace(count=2), options(short, "paged-hybrid", kv_memory=MiB))


def test_an_fp8_kv_cache_needs_a_gpu_with_fp8() -> None:
    model = resolve_model("gpt-oss-20b", kv_cache_dtype="fp8")
    a100 = resolve_gpu("a100-80gb")
    assert a100.fp8_flops is None
    with pytest.raises(UserError, match="an fp8 KV cache needs a GPU with fp8 support; a100-80gb has none"):
        validate_options(options(model, "paged-hybrid", gpu=a100))
    for allocator in ("paged", "contiguous-max"):  # every allocator, not only the grouped ones
        with pytest.raises(UserError, match="an fp8 KV cache needs a GPU with fp8 support; a100-80gb has none"):
            validate_options(options(model, allocator, gpu=a100))
    validate_options(options(model, "paged-hybrid"))  # the H100 has fp8
    # 1,024 B per token per layer, half of bf16: a slot of 12 x 1,024 B
    assert options(model, "paged-hybrid", kv_memory=MiB).budget().bytes_per_token == 12_288


def test_an_fp8_model_on_a_gpu_without_fp8_is_told_what_auto_keeps() -> None:
    # found by the option fuzzer: a model whose own kv_dtype is fp8; --kv-cache-dtype auto would keep it
    model = resolve_model("layers=1,heads=1,kv_heads=1,head_size=1,params=1e3,max_len=2,kv_dtype=fp8")
    with pytest.raises(UserError, match=r"give --kv-cache-dtype bf16 or fp16 \(auto keeps the model's kv_dtype, fp8"):
        validate_options(options(model, "paged", gpu=resolve_gpu("a100-80gb")))
