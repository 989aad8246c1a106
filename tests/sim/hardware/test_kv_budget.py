"""The KV budget, given or derived from a model on a GPU preset, checked against hand arithmetic."""

import pytest

from sim.errors import UserError
from sim.hardware.budget import EngineConfig, activation_reserve_bytes, kv_budget
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS

GiB = 2**30


def test_opt13b_with_12gib():
    model = MODELS["opt-13b"]
    budget = kv_budget(model, None, block_size=16, kv_memory=12 * GiB)
    # 12 GiB / (16 x 819,200 B) = 983.04 -> 983 whole blocks
    assert budget.num_blocks == 983
    assert budget.capacity_tokens == 15_728
    assert budget.describe(model) == (
        "KV cache: 983 blocks x 16 tokens = 15,728 tokens (12.00 GiB); "
        "max concurrency at 2,048 tokens per request: 7.68x"
    )


def test_derived_budget_llama2_7b_a100_80gb():
    model, gpu = MODELS["llama-2-7b"], GPUS["a100-80gb"]
    budget = kv_budget(model, gpu)
    usable = int(80 * GiB * 0.9)
    weights = 6_738_415_616 * 2
    # activations at 4,096 batched tokens: (2*4096 + (32+64)*128 + 3*11008) * 2 B per token + 256 x 32,000 x 4 B
    activations = 4096 * (8192 + 12288 + 33024) * 2 + 256 * 32000 * 4
    assert activation_reserve_bytes(model, EngineConfig()) == activations
    kv = usable - weights - activations - GiB
    assert budget.requested_bytes == kv
    assert budget.num_blocks == kv // (16 * 524_288)


def test_model_too_big_for_gpu_is_a_user_error():
    with pytest.raises(UserError, match="does not fit"):
        kv_budget(MODELS["llama-2-70b"], GPUS["a100-80gb"])
