"""Models by name: the presets in `MODELS` (built in, and Hugging Face config files in `model_configs/`), and
`resolve_model`, which also reads a config.json or dimensions given on the command line. The spec itself,
`ModelSpec`, is in `sim.hardware.model_spec`.

Every byte figure is exact integer arithmetic so that, e.g., OPT-13B's KV cache costs exactly 819,200 B per token
(2 (K and V) x 40 layers x 40 KV heads x 128 head size x 2 B).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

from sim.errors import UserError
from sim.hardware.hf_config import load_config
from sim.hardware.model_spec import DTYPE_BYTES, ModelSpec


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


# Presets from Hugging Face config files shipped in sim/hardware/model_configs/, one `<org>--<model>.json` per
# repository (its config.json's fields, plus `_source` and the preset's `_name`), read by sim.hardware.hf_config.
MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")


def _config_presets() -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """The presets of MODEL_CONFIG_DIR by name, and their other names (repository id, model name) to that name."""
    presets: dict[str, ModelSpec] = {}
    aliases: dict[str, str] = {}
    for file in sorted(os.listdir(MODEL_CONFIG_DIR)):
        if not file.endswith(".json"):
            continue
        org, _, model = file[: -len(".json")].partition("--")
        repo = f"{org}/{model}"
        with open(os.path.join(MODEL_CONFIG_DIR, file), encoding="utf-8") as f:
            name = json.load(f).get("_name") or model.lower()
        spec = replace(load_config(os.path.join(MODEL_CONFIG_DIR, file), name=name), source=repo)
        presets[name] = spec
        for alias in (repo, model):
            aliases[alias.lower()] = name
    return presets, aliases


_CONFIG_PRESETS, _CONFIG_ALIASES = _config_presets()
MODELS.update(_CONFIG_PRESETS)
# Every name a preset answers to, lower-cased: its name, and for a config preset its repository and model name.
MODEL_ALIASES: dict[str, str] = {**_CONFIG_ALIASES, **{name.lower(): name for name in MODELS}}
KV_CACHE_DTYPES = ("auto", "bf16", "fp16", "fp8")  # --kv-cache-dtype (vLLM's names); auto: the model's dtype


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


def resolve_model(text: str, max_model_len: int | None = None, kv_cache_dtype: str | None = None) -> ModelSpec:
    """A preset name (any case; a config preset also by its Hugging Face repository or model name), a Hugging Face
    config.json or a directory holding one, or dimensions
    'layers=32,heads=32,kv_heads=8,head_size=128,params=8e9,max_len=8192[,...]'.

    kv_cache_dtype: None or "auto" keeps the model's KV dtype; bf16, fp16 or fp8 replaces it."""
    is_config = os.path.isfile(text) or os.path.isfile(os.path.join(text, "config.json"))
    if "=" in text and not is_config:
        spec = _model_from_dims(text)
    elif is_config:
        spec = load_config(text)
    elif text.lower() in MODEL_ALIASES:
        spec = MODELS[MODEL_ALIASES[text.lower()]]
    elif os.path.isdir(text):
        raise UserError(f"unknown model {text!r}: a directory without a config.json, and no preset of that name")
    else:
        raise UserError(
            f"unknown model {text!r}; presets: {', '.join(MODELS)} (or a Hugging Face config.json, or give "
            f"dimensions: {DIMS_HELP})"
        )
    if kv_cache_dtype not in (None, "auto"):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        spec = replace(spec, kv_dtype=kv_cache_dtype)
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
