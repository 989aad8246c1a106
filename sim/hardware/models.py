"""Model descriptions: `ModelSpec` (the transformer shapes that decide KV size, weight size and FLOPs), the presets in
`MODELS`, and models given as dimensions on the command line (`resolve_model`).

Every byte figure is exact integer arithmetic so that, e.g., OPT-13B's KV cache costs exactly 819,200 B per token
(2 (K and V) x 40 layers x 40 KV heads x 128 head size x 2 B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.errors import UserError

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """Transformer shapes that decide KV size, weight size and FLOPs."""

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    num_params: int  # parameters (weights), all GPUs together
    max_model_len: int  # tokens, prompt + output
    kv_dtype: str = "fp16"
    weight_dtype: str = "fp16"
    source: str = ""

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads held by one GPU under tensor parallelism; replicated when tp exceeds the head count (as vLLM)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token occupies on one GPU: 2 (K, V) x layers x KV heads x head size x dtype bytes."""
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_size * self.kv_dtype_bytes

    def weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes on one GPU (weights split evenly over tp GPUs)."""
        return self.num_params * DTYPE_BYTES[self.weight_dtype] // tp


def _model(name, layers, hidden, heads, kv_heads, head, inter, vocab, params, max_len, kv="fp16", src=""):
    return ModelSpec(name, layers, hidden, heads, kv_heads, head, inter, vocab, params, max_len, kv, kv, src)


# Shapes from each model's published config.json; parameter counts as published by the model authors.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _model("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, 12_853_473_280, 2048, src="facebook/opt-13b"),
        _model("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616, 4096, src="meta-llama/Llama-2-7b-hf"),
        _model(
            "llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 13_015_864_320, 4096, src="meta-llama/Llama-2-13b-hf"
        ),
        _model(
            "llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 68_976_648_192, 4096, src="meta-llama/Llama-2-70b-hf"
        ),
        _model(
            "llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 8192, "bf16", "meta-llama/Meta-Llama-3-8B"
        ),
        _model(
            "llama-3-70b",
            80,
            8192,
            64,
            8,
            128,
            28672,
            128256,
            70_553_706_496,
            8192,
            "bf16",
            "meta-llama/Meta-Llama-3-70B",
        ),
        _model(
            "mistral-7b", 32, 4096, 32, 8, 128, 14336, 32000, 7_241_732_096, 32768, "bf16", "mistralai/Mistral-7B-v0.3"
        ),
    )
}


_MODEL_KEYS = {
    "layers": int,
    "hidden": int,
    "heads": int,
    "kv_heads": int,
    "head_size": int,
    "intermediate": int,
    "vocab": int,
    "params": float,
    "max_len": int,
    "kv_dtype": str,
    "name": str,
}
# Dimensions a model given on the command line must state. `heads` (query heads) is among them: taking it equal to
# kv_heads, as a default would, underestimates the activation reserve and the FLOPs of every GQA model.
REQUIRED_DIMS = ("layers", "heads", "kv_heads", "head_size", "params", "max_len")
# Bounds of the dimensions: integers in [1, MAX_DIM] (int32, as in every model config), parameters in
# [1, MAX_PARAMS] (a finite number; 1e15 is a thousand times today's largest models).
MAX_DIM = 2**31 - 1
MAX_PARAMS = 1e15
DIMS_HELP = "layers=..,heads=..,kv_heads=..,head_size=..,params=..,max_len=.."


def resolve_model(text: str, max_model_len: int | None = None) -> ModelSpec:
    """A preset name, or dimensions 'layers=32,heads=32,kv_heads=8,head_size=128,params=8e9,max_len=8192[,...]'."""
    if "=" in text:
        spec = _model_from_dims(text)
    elif text in MODELS:
        spec = MODELS[text]
    else:
        raise UserError(f"unknown model {text!r}; presets: {', '.join(MODELS)} (or give dimensions: {DIMS_HELP})")
    if max_model_len is not None:
        if max_model_len < 2:
            raise UserError(f"--max-model-len must be at least 2, got {max_model_len}")
        spec = replace(spec, max_model_len=max_model_len)
    return spec


def _model_from_dims(text: str) -> ModelSpec:
    values: dict[str, object] = {}
    for item in text.split(","):
        key, _, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if key not in _MODEL_KEYS:
            raise UserError(f"unknown model dimension {key!r}; known: {', '.join(_MODEL_KEYS)}")
        if key in values:
            raise UserError(f"model dimension {key} is given twice")
        values[key] = _dimension(key, raw)
    missing = [k for k in REQUIRED_DIMS if k not in values]
    if missing:
        raise UserError(
            f"model dimensions missing: {', '.join(missing)} (a model given by dimensions needs {DIMS_HELP})"
        )
    kv_dtype = str(values.get("kv_dtype", "bf16"))
    if kv_dtype not in DTYPE_BYTES:
        raise UserError(f"kv_dtype must be one of {', '.join(DTYPE_BYTES)}, got {kv_dtype!r}")
    heads, kv_heads, head_size = int(values["heads"]), int(values["kv_heads"]), int(values["head_size"])
    if heads % kv_heads:
        raise UserError(f"heads must be a multiple of kv_heads, got heads={heads}, kv_heads={kv_heads}")
    hidden = int(values.get("hidden", heads * head_size))
    return ModelSpec(
        name=str(values.get("name", "custom")),
        num_layers=int(values["layers"]),
        hidden_size=hidden,
        num_q_heads=heads,
        num_kv_heads=kv_heads,
        head_size=head_size,
        intermediate_size=int(values.get("intermediate", 4 * hidden)),
        vocab_size=int(values.get("vocab", 32000)),
        num_params=int(values["params"]),
        max_model_len=int(values["max_len"]),
        kv_dtype=kv_dtype,
        weight_dtype="bf16",
        source="command line",
    )


def _dimension(key: str, raw: str) -> object:
    """One dimension's value, checked against its bounds."""
    kind = _MODEL_KEYS[key]
    if kind is str:
        if not raw:
            raise UserError(f"model dimension {key} is empty")
        return raw
    if kind is float:  # params: a count that may be written 8e9
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 1 <= value <= MAX_PARAMS:  # nan fails too
            raise UserError(f"model dimension params must be a number in [1, {MAX_PARAMS:g}], got {raw!r}")
        return int(value)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_DIM:
        raise UserError(f"model dimension {key} must be an integer in [1, {MAX_DIM:,}], got {raw!r}")
    return value
