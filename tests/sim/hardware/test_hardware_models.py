"""Model presets and models given as dimensions: KV and weight bytes checked against hand arithmetic."""

import pytest

from sim.errors import UserError
from sim.hardware.models import MODELS, resolve_model


@pytest.mark.parametrize(
    "name, expected",
    [
        ("opt-13b", 2 * 40 * 5120 * 2),  # 819,200: hidden 5120 = 40 heads x 128
        ("llama-2-7b", 2 * 32 * 32 * 128 * 2),  # 524,288
        ("llama-2-13b", 2 * 40 * 40 * 128 * 2),
        ("llama-2-70b", 2 * 80 * 8 * 128 * 2),  # GQA: 8 KV heads
        ("llama-3-8b", 2 * 32 * 8 * 128 * 2),  # 131,072
        ("llama-3-70b", 2 * 80 * 8 * 128 * 2),
        ("mistral-7b", 2 * 32 * 8 * 128 * 2),
    ],
)
def test_kv_bytes_per_token(name, expected):
    assert MODELS[name].kv_bytes_per_token() == expected


def test_issue_examples_of_kv_bytes():
    assert MODELS["opt-13b"].kv_bytes_per_token() == 819_200
    assert MODELS["llama-2-7b"].kv_bytes_per_token() == 524_288
    assert MODELS["llama-3-8b"].kv_bytes_per_token() == 131_072


def test_tensor_parallel_splits_weights_and_kv_heads():
    model = MODELS["llama-2-70b"]
    assert model.kv_bytes_per_token(tp=4) == 2 * 80 * 2 * 128 * 2
    assert model.kv_bytes_per_token(tp=8) == 2 * 80 * 1 * 128 * 2
    assert model.kv_bytes_per_token(tp=16) == 2 * 80 * 1 * 128 * 2  # replicated beyond one head per GPU
    assert model.weight_bytes(tp=4) == 68_976_648_192 * 2 // 4


def test_model_from_dimensions_and_max_len_override():
    m = resolve_model("layers=2,heads=4,kv_heads=4,head_size=64,params=1e8,max_len=512,kv_dtype=fp16")
    assert m.kv_bytes_per_token() == 2 * 2 * 4 * 64 * 2
    assert resolve_model("opt-13b", max_model_len=1024).max_model_len == 1024
    with pytest.raises(UserError, match="missing"):
        resolve_model("layers=2")
    with pytest.raises(UserError, match="unknown model"):
        resolve_model("gpt-5")
