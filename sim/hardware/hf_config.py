"""Models from Hugging Face `config.json` files: `load_config(PATH)` reads a file (or a directory holding
`config.json`) as it is, offline, and `spec_from_config` turns the parsed JSON into a `ModelSpec`.

Families: Llama, Mistral, Mixtral, Qwen2 / Qwen3 (and their MoE), Gemma 2 / 3 (the text model; a config nested under
`text_config` too), DeepSeek-V2 / V3 (MLA, MoE), gpt-oss, Phi-3. A config of another architecture, or one that lacks
a field the arithmetic needs, is refused with a `UserError` that reads `file: reason` and names the field.

Parameters (`num_params`) count every weight matrix, bias and norm vector of the language model:

    embeddings            vocab x hidden, plus the same again for the LM head unless tie_word_embeddings
    attention, per layer  q: hidden x heads x head_dim, k and v: hidden x kv_heads x head_dim each,
                          o: heads x head_dim x hidden; + biases where the family has them (Qwen2: q, k, v;
                          attention_bias: q, k, v, o); + q/k norms (Qwen3, Gemma 3: 2 x head_dim); gpt-oss: + sinks
                          (heads)
        MLA (DeepSeek)    q: hidden x q_lora_rank + q_lora_rank (norm) + q_lora_rank x heads x (nope + rope)
                          (or hidden x heads x (nope + rope) when q_lora_rank is null);
                          kv: hidden x (kv_lora_rank + rope) + kv_lora_rank (norm) + kv_lora_rank x heads x (nope + v);
                          o: heads x v_head_dim x hidden
    MLP, dense layer      3 x hidden x intermediate (gate, up, down); + 2 x intermediate + hidden with mlp_bias
    MoE layer             experts x expert + shared experts x expert + router hidden x experts (DeepSeek-V3: + the
                          experts' score-correction bias); expert = 3 x hidden x moe_intermediate (Mixtral, gpt-oss:
                          intermediate); gpt-oss experts and router carry biases (2 x inter + hidden; experts)
    norms                 2 x hidden per layer (Gemma 2 / 3: 4), + hidden (final)

Which layers are MoE: Mixtral and gpt-oss every layer; Qwen MoE every decoder_sparse_step-th layer not in
mlp_only_layers; DeepSeek layers from first_k_dense_replace on (every moe_layer_freq-th).

Active parameters per token (`active_params`) are the same sum with top-k routed experts in place of all of them
(shared experts, router, attention and both embedding matrices count in full). A vision tower (Gemma 3) and
DeepSeek-V3's multi-token-prediction layer are not counted.

Weight bytes: parameters x the dtype's bytes (torch_dtype or dtype). A `quantization_config` changes the weight
matrices it quantizes: fp8 (DeepSeek-V3) stores attention, MLP and expert matrices in 1 byte (embeddings, norms,
router in the dtype; the block scales, 0.02%, are not counted); mxfp4 (gpt-oss) stores the routed experts' matrices
in 4.25 bits (4-bit values, one 8-bit scale per 32); gptq and awq store attention, MLP and expert matrices in `bits`.

KV cache: the dtype of the model ("auto"), 2 x layers x kv_heads x head_dim per token; MLA caches one latent of
kv_lora_rank + qk_rope_head_dim per layer (see `ModelSpec.kv_bytes_per_token`). Sliding windows and per-layer
attention kinds are recorded on the spec (`sliding_window`, `layer_types`); the KV figure counts every layer in full.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sim.errors import UserError
from sim.hardware.model_spec import DTYPE_BYTES, ModelSpec

# The architectures read, each to its family (the arithmetic above differs by family).
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "DeepseekV2ForCausalLM": "deepseek",
    "DeepseekV3ForCausalLM": "deepseek",
    "GptOssForCausalLM": "gpt_oss",
    "Phi3ForCausalLM": "phi3",
}
# A config without `architectures`: its model_type decides.
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "mixtral",
    "qwen2": "qwen2",
    "qwen2_moe": "qwen2_moe",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3_moe",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
    "gpt_oss": "gpt_oss",
    "phi3": "phi3",
}
# transformers' defaults for fields that the published configs of a family leave out (Gemma 3's text_config omits
# vocab_size and max_position_embeddings), and tie_word_embeddings (Gemma ties them; the others do not).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"tie_word_embeddings": True},
    "gemma3": {
        "tie_word_embeddings": True,
        "vocab_size": 262_208,
        "max_position_embeddings": 131_072,
        "sliding_window_pattern": 6,
    },
}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
MAX_DIM = 2**31 - 1
MXFP4_BYTES = (17, 32)  # 4.25 bits: 4-bit values and one 8-bit scale per 32 values, as a fraction of a byte


def load_config(path: str, name: str | None = None):
    """The ModelSpec of a Hugging Face config.json, or of the config.json in directory `path`."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"{file}: cannot read the model config ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not JSON (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if name is None:
        name = _default_name(data, file)
    return spec_from_config(data, file, name=name, source=file)


def _default_name(data: Any, file: str) -> str:
    """A preset's `_name`, else the last part of `_name_or_path`, else the file's name (its folder's for a
    config.json)."""
    if isinstance(data, dict):
        for key in ("_name", "_name_or_path"):
            value = data.get(key)
            if isinstance(value, str) and value.strip("/ "):
                return value.rstrip("/").rsplit("/", 1)[-1]
    stem = os.path.splitext(os.path.basename(file))[0]
    folder = os.path.basename(os.path.dirname(os.path.abspath(file)))
    return folder if stem == "config" and folder else stem


class _Reader:
    """Fields of one config, each refused with `where: reason` naming it when missing or out of range."""

    def __init__(self, config: dict, outer: dict, where: str, defaults: dict):
        self.config, self.outer, self.where, self.defaults = config, outer, where, defaults

    def error(self, reason: str) -> UserError:
        return UserError(f"{self.where}: {reason}")

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key)
        if value is None:
            value = self.defaults.get(key, default)
        return value

    def int(self, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self.raw(key)
        if value is None:
            if default is ...:
                raise self.error(f"{key} is missing (needed to size the model)")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DIM:
            raise self.error(f"{key} must be an integer in [{minimum}, {MAX_DIM:,}], got {value!r}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{key} must be true or false, got {value!r}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.error(f"{key} must be a list of layer indices, got {value!r}")
        return value


def spec_from_config(config: Any, where: str = "config.json", name: str = "custom", source: str = ""):
    """A ModelSpec from a parsed config.json (see the module docstring for what is read and how it is counted)."""

    if not isinstance(config, dict):
        raise UserError(f"{where}: not a model config (a JSON object), got {type(config).__name__}")
    architecture, family = _architecture(config, where)
    text = config.get("text_config")
    if text is not None and not isinstance(text, dict):
        raise UserError(f"{where}: text_config must be an object")
    cfg = _Reader(text if text is not None else config, config, where, FAMILY_DEFAULTS.get(family, {}))

    hidden = cfg.int("hidden_size")
    layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    kv_heads = cfg.int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise cfg.error(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    if cfg.has("head_dim"):
        head_dim = cfg.int("head_dim")
    elif hidden % heads:
        raise cfg.error(
            f"head_dim is missing and hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        )
    else:
        head_dim = hidden // heads
    vocab = cfg.int("vocab_size")
    max_len = cfg.int("max_position_embeddings", minimum=2)
    dtype = _dtype(cfg, config)
    tie = cfg.bool("tie_word_embeddings", FAMILY_DEFAULTS.get(family, {}).get("tie_word_embeddings", False))

    # Parameter groups, each (total, active), by how a quantized checkpoint stores them.
    groups = {"embedding": [0, 0], "matrix": [0, 0], "expert": [0, 0], "other": [0, 0]}

    def add(group: str, total: int, active: int | None = None) -> None:
        groups[group][0] += total
        groups[group][1] += total if active is None else active

    add("embedding", vocab * hidden * (1 if tie else 2))
    add("other", hidden)  # final norm
    norms_per_layer = 4 if family in ("gemma2", "gemma3") else 2

    # Attention.
    kv_lora_rank = rope_dim = v_dim = 0
    if family == "deepseek":
        kv_lora_rank = cfg.int("kv_lora_rank")
        rope_dim = cfg.int("qk_rope_head_dim")
        nope_dim = cfg.int("qk_nope_head_dim")
        v_dim = cfg.int("v_head_dim")
        q_lora_rank = cfg.int("q_lora_rank", None)
        head_dim = nope_dim + rope_dim  # the query-key width of a head
        if q_lora_rank is None:
            add("matrix", layers * hidden * heads * head_dim)
        else:
            add("matrix", layers * (hidden * q_lora_rank + q_lora_rank * heads * head_dim))
            add("other", layers * q_lora_rank)  # q_a_layernorm
        add("matrix", layers * hidden * (kv_lora_rank + rope_dim))  # kv_a_proj_with_mqa
        add("other", layers * kv_lora_rank)  # kv_a_layernorm
        add("matrix", layers * kv_lora_rank * heads * (nope_dim + v_dim))  # kv_b_proj
        add("matrix", layers * heads * v_dim * hidden)  # o_proj
    else:
        q, kv = heads * head_dim, kv_heads * head_dim
        add("matrix", layers * (hidden * q + 2 * hidden * kv + q * hidden))
        if family in ("qwen2", "qwen2_moe"):
            add("other", layers * (q + 2 * kv))  # q, k, v biases
        elif cfg.bool("attention_bias", False):
            add("other", layers * (q + 2 * kv + hidden))
        if family in ("qwen3", "qwen3_moe", "gemma3"):
            add("other", layers * 2 * head_dim)  # q_norm, k_norm
        if family == "gpt_oss":
            add("other", layers * heads)  # attention sinks
    add("other", layers * norms_per_layer * hidden)

    # MLP: dense layers and MoE layers.
    moe_layers = _moe_layers(cfg, family, layers)
    dense_layers = layers - len(moe_layers)
    experts = top_k = shared = moe_inter = 0
    intermediate = cfg.int("intermediate_size", None)
    if dense_layers:
        if intermediate is None:
            raise cfg.error("intermediate_size is missing (needed to size the model)")
        add("matrix", dense_layers * 3 * hidden * intermediate)
        if cfg.bool("mlp_bias", False):
            add("other", dense_layers * (2 * intermediate + hidden))
    if moe_layers:
        n = len(moe_layers)
        if family == "mixtral":
            experts, top_k = cfg.int("num_local_experts"), cfg.int("num_experts_per_tok")
            moe_inter = cfg.int("intermediate_size")
            add("expert", n * experts * 3 * hidden * moe_inter, n * top_k * 3 * hidden * moe_inter)
            add("other", n * hidden * experts)  # router
        elif family == "gpt_oss":
            experts = cfg.int("num_local_experts")
            top_k = cfg.int("experts_per_token", None) or cfg.int("num_experts_per_tok")
            moe_inter = cfg.int("intermediate_size")
            matrices, biases = 3 * hidden * moe_inter, 2 * moe_inter + hidden  # gate_up (2 x inter) and down
            add("expert", n * experts * matrices, n * top_k * matrices)
            add("other", n * experts * biases, n * top_k * biases)
            add("other", n * (hidden * experts + experts))  # router and its bias
        elif family in ("qwen3_moe", "qwen2_moe"):
            experts, top_k = cfg.int("num_experts"), cfg.int("num_experts_per_tok")
            moe_inter = cfg.int("moe_intermediate_size")
            add("expert", n * experts * 3 * hidden * moe_inter, n * top_k * 3 * hidden * moe_inter)
            add("other", n * hidden * experts)  # router
            if family == "qwen2_moe" and cfg.int("shared_expert_intermediate_size", 0, minimum=0):
                shared = 1
                add("matrix", n * 3 * hidden * cfg.int("shared_expert_intermediate_size"))
                add("other", n * hidden)  # shared_expert_gate
        else:  # deepseek
            experts, top_k = cfg.int("n_routed_experts"), cfg.int("num_experts_per_tok")
            shared = cfg.int("n_shared_experts", 0, minimum=0)
            moe_inter = cfg.int("moe_intermediate_size")
            add("expert", n * experts * 3 * hidden * moe_inter, n * top_k * 3 * hidden * moe_inter)
            add("matrix", n * shared * 3 * hidden * moe_inter)
            add("other", n * hidden * experts)  # router
            if cfg.raw("topk_method") == "noaux_tc":
                add("other", n * experts)  # e_score_correction_bias
        if top_k > experts:
            raise cfg.error(f"experts per token ({top_k}) exceed the {experts} experts")
    if intermediate is None:
        intermediate = top_k * moe_inter  # what one token's MoE layer computes

    total = sum(g[0] for g in groups.values())
    active = sum(g[1] for g in groups.values())
    quantization, weight_total, weight_active = _quantized_bytes(cfg, config, groups, DTYPE_BYTES[dtype])
    sliding_window, layer_types = _sliding(cfg, family, layers)
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        num_q_heads=heads,
        num_kv_heads=kv_heads,
        head_size=head_dim,
        intermediate_size=intermediate,
        vocab_size=vocab,
        num_params=total,
        max_model_len=max_len,
        kv_dtype=dtype,
        weight_dtype=dtype,
        source=source or where,
        active_params=active,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=rope_dim,
        v_head_dim=v_dim,
        sliding_window=sliding_window,
        layer_types=layer_types,
        num_experts=experts,
        num_experts_per_tok=top_k,
        num_shared_experts=shared,
        moe_intermediate_size=moe_inter,
        architecture=architecture,
        quantization=quantization,
        weight_bytes_total=weight_total,
        active_weight_bytes_total=weight_active,
    )


def _architecture(config: dict, where: str) -> tuple[str, str]:
    archs = config.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
            raise UserError(f"{where}: architectures must be a list of class names, got {archs!r}")
        for arch in archs:
            if arch in ARCHITECTURES:
                return arch, ARCHITECTURES[arch]
        raise UserError(
            f"{where}: unknown architecture {', '.join(archs)} (architectures); supported: {', '.join(ARCHITECTURES)}"
        )
    model_type = config.get("model_type")
    if model_type is None:
        raise UserError(f"{where}: architectures is missing (and model_type too)")
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{where}: unknown architecture: model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}"
        )
    return str(model_type), MODEL_TYPES[model_type]


def _dtype(cfg: _Reader, outer: dict) -> str:
    for key in ("torch_dtype", "dtype"):
        for source in (cfg.config, outer):
            value = source.get(key)
            if value is not None:
                if value not in DTYPES:
                    raise cfg.error(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")
                return DTYPES[value]
    return "bf16"  # no dtype stated (transformers would load float32; every served checkpoint here is bf16)


def _moe_layers(cfg: _Reader, family: str, layers: int) -> list[int]:
    if family in ("mixtral", "gpt_oss"):
        return list(range(layers))
    if family in ("qwen3_moe", "qwen2_moe"):
        if not cfg.int("num_experts", 0, minimum=0):
            return []
        step = cfg.int("decoder_sparse_step", 1)
        dense = set(cfg.int_list("mlp_only_layers"))
        return [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    if family == "deepseek":
        if not cfg.int("n_routed_experts", 0, minimum=0):
            return []
        first = cfg.int("first_k_dense_replace", 0, minimum=0)
        freq = cfg.int("moe_layer_freq", 1)
        return [i for i in range(layers) if i >= first and i % freq == 0]
    return []


def _quantized_bytes(cfg: _Reader, outer: dict, groups: dict, dtype_bytes: int) -> tuple[str, int | None, int | None]:
    """(method, total weight bytes, active weight bytes) of a quantized checkpoint; ("", None, None) otherwise."""
    qc = cfg.config.get("quantization_config") or outer.get("quantization_config")
    if qc is None:
        return "", None, None
    if not isinstance(qc, dict) or not isinstance(qc.get("quant_method"), str):
        raise cfg.error("quantization_config.quant_method is missing")
    method = qc["quant_method"]
    if method == "fp8":
        sizes = {"matrix": (1, 1), "expert": (1, 1)}
    elif method == "mxfp4":
        sizes = {"expert": MXFP4_BYTES}
    elif method in ("gptq", "awq"):
        bits = qc.get("bits", qc.get("w_bit"))
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise cfg.error(f"quantization_config.bits must be an integer in [1, 16], got {bits!r}")
        sizes = {"matrix": (bits, 8), "expert": (bits, 8)}
    else:
        raise cfg.error(
            f"quantization_config.quant_method {method!r} is not supported (supported: fp8, mxfp4, gptq, awq)"
        )
    totals = []
    for index in (0, 1):
        b = 0
        for group, counts in groups.items():
            num, den = sizes.get(group, (dtype_bytes, 1))
            b += -(-counts[index] * num // den)
        totals.append(b)
    return method, totals[0], totals[1]


def _sliding(cfg: _Reader, family: str, layers: int) -> tuple[int | None, tuple[str, ...]]:
    """The sliding window (tokens) and each layer's attention kind; (None, ()) when every layer attends in full."""
    if family in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and not cfg.bool("use_sliding_window", False):
        return None, ()  # Qwen configs state a window that is not used unless use_sliding_window
    window = cfg.int("sliding_window", None)
    types = cfg.raw("layer_types")
    if types is not None:
        kinds = ("full_attention", "sliding_attention")
        if not isinstance(types, list) or len(types) != layers or not all(t in kinds for t in types):
            raise cfg.error(f"layer_types must list {layers} layers, each one of {', '.join(kinds)}")
        if "sliding_attention" in types and window is None:
            raise cfg.error("sliding_window is missing (layer_types has sliding_attention layers)")
        return (window if "sliding_attention" in types else None), tuple(types)
    if window is None:
        return None, ()
    if family == "gemma2":  # even layers slide
        return window, tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    if family == "gemma3":  # every sliding_window_pattern-th layer is global
        pattern = cfg.int("sliding_window_pattern")
        return window, tuple("full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers))
    if family == "gpt_oss":  # alternating, sliding first
        return window, tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    return window, ("sliding_attention",) * layers
