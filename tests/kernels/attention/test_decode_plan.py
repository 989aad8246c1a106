"""The decode heuristics (kernels/attention/decode_plan.py) against hand-worked values: split counts, the uniform
test, the fused-reduce rule and the small-grid configs. Host arithmetic only: no kernel runs."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.attention import decode_plan  # noqa: E402


def test_choose_partition():
    # big batch, short context: one pass
    assert decode_plan.choose_partition(256, 32, 512, 64, 132, None)[0] == 1
    # batch 1, long context: split, partitions are multiples of block_n and cover max_len
    s, p = decode_plan.choose_partition(1, 8, 8192, 64, 132, None)
    assert s > 1 and p % 64 == 0 and s * p >= 8192 and (s - 1) * p < 8192
    # long contexts are always cut into partitions of at most MAX_PARTITION tokens (mixed lengths)
    s, p = decode_plan.choose_partition(64, 32, 8192, 64, 132, None)
    assert p <= decode_plan.MAX_PARTITION and s * p >= 8192
    # no mostly-empty last wave: 16 seqs x 8 KV heads x 8192 -> 4 splits (512 programs), not 5 (640)
    assert decode_plan.choose_partition(16, 8, 8192, 64, 132, None) == (4, 2048)
    # big batch, 2048 tokens: no split
    assert decode_plan.choose_partition(64, 32, 2048, 64, 132, None)[0] == 1
    # forcing
    assert decode_plan.choose_partition(4, 4, 1000, 64, 132, 1) == (1, 1000)
    s, p = decode_plan.choose_partition(4, 4, 1000, 64, 132, 3)
    assert s == 3 and p == 384


def test_fused_auto_rule():
    # default (fused_reduce=None): fused only when the grid is one wave of resident programs
    slots = decode_plan.RESIDENT_PROGRAMS_PER_SM * 132
    assert decode_plan.auto_fused(1, 8, 32, torch.device("cpu"))  # 256 programs
    assert not decode_plan.auto_fused(16, 8, 4, torch.device("cpu"))  # 512 programs
    assert decode_plan.auto_fused(1, 1, slots, torch.device("cpu")) and not decode_plan.auto_fused(
        1, 1, slots + 1, torch.device("cpu")
    )


def test_small_grid_config(monkeypatch):
    # fewer (sequence, KV head) pairs than SMs: 32-token tiles, 5 stages, fused reduce on every split grid;
    # otherwise the large-grid defaults (64-token tiles, 3 stages, fused only on one-wave grids)
    monkeypatch.setattr(decode_plan, "interpreting", lambda: False)
    small = decode_plan.decode_config(128, 4, torch.bfloat16, 16, units=32, num_sms=132)
    assert (small["block_n"], small["num_stages"], small["fuse_always"]) == (32, 5, True)
    assert not small.get("prefetch", False)
    # tiny grouped-query grids (at most 132 / 8 = 16 pairs): register prefetch with 64-token tiles, fused
    tiny = decode_plan.decode_config(128, 4, torch.bfloat16, 16, units=16, num_sms=132)
    assert (tiny["block_n"], tiny["num_stages"], tiny["fuse_always"], tiny["prefetch"]) == (64, 1, True, True)
    assert decode_plan.decode_config(128, 4, torch.bfloat16, 16, units=17, num_sms=132)["block_n"] == 32
    assert not decode_plan.decode_config(128, 1, torch.bfloat16, 16, units=8, num_sms=132).get("prefetch", False)  # MHA
    large = decode_plan.decode_config(128, 1, torch.bfloat16, 16, units=512, num_sms=132)
    assert (large["block_n"], large["num_stages"], large["fuse_always"]) == (64, 3, False)
    assert decode_plan.decode_config(128, 4, torch.bfloat16, 16, units=132, num_sms=132)["block_n"] == 64
    assert (
        decode_plan.decode_config(256, 4, torch.bfloat16, 16, units=8, num_sms=132)["num_stages"] == 3
    )  # head 256: unchanged


def test_split_plan_auto_uniform():
    # a batch that fills a wave (8 x 33 = 264 = 2 x 132 units) with an 8,192-token bound: the cap's 4 splits on
    # the grid, one partition of 8,192 when uniform; off with a hint, forced splits, or a batch under a wave
    assert decode_plan.split_plan(33, 8, 8192, 64, 132, None, None) == (4, 2048, True, 8192)
    assert decode_plan.split_plan(33, 8, 8192, 64, 132, None, 8192) == (1, 8192, False, 8192)
    assert decode_plan.split_plan(33, 8, 8192, 64, 132, 4, None) == (4, 2048, False, 2048)
    assert decode_plan.split_plan(16, 8, 8192, 64, 132, None, None)[2] is False
    assert decode_plan.split_plan(33, 8, 8192, 64, 132, None, None, allow_auto_uniform=False)[2] is False
