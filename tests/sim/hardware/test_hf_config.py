"""Models from Hugging Face config.json files: each family's KV bytes per token, parameters and active parameters
against hand arithmetic, the shipped config presets, --kv-cache-dtype, and bad configs refused with `file: reason`."""

import json

import pytest

from sim.cli.main import main
from sim.cost.roofline import RooflineCostModel
from sim.errors import UserError
from sim.hardware.gpus import resolve_gpu
from sim.hardware.hf_config import load_config, spec_from_config
from sim.hardware.models import MODELS, resolve_model

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def test_llama():
    m = spec_from_config(LLAMA_31_8B)
    assert m.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072  # head_dim = 4096 / 32 = 128
    # embeddings + LM head: 2 x 128256 x 4096 = 1,050,673,152
    # per layer: q, o 4096 x 4096 each; k, v 4096 x 1024 each; MLP 3 x 4096 x 14336; 2 norms x 4096 = 218,112,000
    # final norm 4096
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert per_layer == 218_112_000
    assert m.num_params == 2 * 128256 * 4096 + 32 * per_layer + 4096 == 8_030_261_248  # Meta's published count
    assert m.active_params == m.num_params  # dense
    assert m.weight_bytes() == 8_030_261_248 * 2 and m.kv_dtype == "bf16" and m.max_model_len == 131072
    assert m.sliding_window is None and m.layer_types == ()


def test_mistral_sliding_window():
    config = {
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    }  # mistralai/Mistral-7B-v0.1
    m = spec_from_config(config)
    assert m.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2
    # 2 x 32000 x 4096 + 32 x 218,112,000 (as Llama-3-8B's layers) + 4096 = the mistral-7b preset's count
    assert m.num_params == 2 * 32000 * 4096 + 32 * 218_112_000 + 4096 == MODELS["mistral-7b"].num_params
    assert m.sliding_window == 4096 and m.layer_types == ("sliding_attention",) * 32


def test_qwen2_has_qkv_biases():
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 32768,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 152064,
    }  # Qwen/Qwen2.5-7B-Instruct
    m = spec_from_config(config)
    assert m.kv_bytes_per_token() == 2 * 28 * 4 * 128 * 2  # head_dim 3584 / 28 = 128
    # per layer: q, o 3584 x 3584; k, v 3584 x 512; biases 3584 + 2 x 512; MLP 3 x 3584 x 18944; norms 2 x 3584
    per_layer = 2 * 3584 * 3584 + 2 * 3584 * 512 + (3584 + 1024) + 3 * 3584 * 18944 + 2 * 3584
    assert m.num_params == 2 * 152064 * 3584 + 28 * per_layer + 3584 == 7_615_616_512  # Qwen: 7.61B
    assert m.sliding_window is None  # use_sliding_window is false


def test_qwen3_dense_has_qk_norms():
    m = resolve_model("qwen3-8b")
    assert m.kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2 == 147_456
    # per layer: q, o 4096 x 4096; k, v 4096 x 1024; q/k norms 2 x 128; MLP 3 x 4096 x 12288; norms 2 x 4096
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096
    assert m.num_params == 2 * 151936 * 4096 + 36 * per_layer + 4096 == 8_190_735_360  # Qwen: 8.2B


def test_qwen3_moe():
    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "decoder_sparse_step": 1,
        "head_dim": 128,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "max_position_embeddings": 40960,
        "mlp_only_layers": [],
        "moe_intermediate_size": 768,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936,
    }  # Qwen/Qwen3-30B-A3B
    m = spec_from_config(config)
    assert m.kv_bytes_per_token() == 2 * 48 * 4 * 128 * 2
    # attention per layer: q, o 2048 x 4096; k, v 2048 x 512; q/k norms 2 x 128; norms 2 x 2048
    attention = 2 * 2048 * 4096 + 2 * 2048 * 512 + 2 * 128 + 2 * 2048
    expert = 3 * 2048 * 768  # gate, up, down
    router = 2048 * 128
    embeddings = 2 * 151936 * 2048
    assert m.num_params == embeddings + 48 * (attention + 128 * expert + router) + 2048 == 30_532_122_624  # 30.5B
    assert m.active_params == embeddings + 48 * (attention + 8 * expert + router) + 2048 == 3_353_032_704  # Qwen: 3.3B
    assert (m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size) == (128, 8, 768)
    assert m.weight_bytes() == m.num_params * 2 and m.active_weight_bytes() == m.active_params * 2


def test_mixtral():
    m = resolve_model("mixtral-8x7b")
    assert m.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 4096  # + 2 norms
    expert = 3 * 4096 * 14336
    router = 4096 * 8
    assert m.num_params == 2 * 32000 * 4096 + 32 * (attention + 8 * expert + router) + 4096 == 46_702_792_704
    assert m.active_params == 2 * 32000 * 4096 + 32 * (attention + 2 * expert + router) + 4096 == 12_879_925_248


def test_gemma2_alternates_sliding_layers():
    config = {
        "architectures": ["Gemma2ForCausalLM"],
        "head_dim": 256,
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "num_attention_heads": 16,
        "num_hidden_layers": 42,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
        "torch_dtype": "float32",
        "vocab_size": 256000,
    }  # google/gemma-2-9b (tie_word_embeddings: Gemma's default, true)
    m = spec_from_config(config)
    assert m.kv_bytes_per_token() == 2 * 42 * 8 * 256 * 4  # float32
    # per layer: q, o 3584 x 4096; k, v 3584 x 2048; MLP 3 x 3584 x 14336; 4 norms x 3584; tied embeddings once
    per_layer = 2 * 3584 * 4096 + 2 * 3584 * 2048 + 3 * 3584 * 14336 + 4 * 3584
    assert m.num_params == 256000 * 3584 + 42 * per_layer + 3584 == 9_241_705_984  # Google: 9.24B
    assert m.layer_types[:3] == ("sliding_attention", "full_attention", "sliding_attention")
    assert m.sliding_window == 4096


def test_gemma3_nested_text_config():
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {
            "head_dim": 128,
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "model_type": "gemma3_text",
            "num_attention_heads": 32,
            "num_hidden_layers": 62,
            "num_key_value_heads": 16,
            "sliding_window": 1024,
        },
        "torch_dtype": "bfloat16",
        "vision_config": {"hidden_size": 1152},
    }  # google/gemma-3-27b-it: vocab_size and max_position_embeddings are Gemma3TextConfig's defaults
    m = spec_from_config(config)
    assert (m.vocab_size, m.max_model_len, m.kv_dtype) == (262208, 131072, "bf16")
    assert m.kv_bytes_per_token() == 2 * 62 * 16 * 128 * 2 == 507_904
    # per layer: q, o 5376 x 4096; k, v 5376 x 2048; q/k norms 2 x 128; MLP 3 x 5376 x 21504; 4 norms x 5376
    per_layer = 2 * 5376 * 4096 + 2 * 5376 * 2048 + 2 * 128 + 3 * 5376 * 21504 + 4 * 5376
    assert m.num_params == 262208 * 5376 + 62 * per_layer + 5376 == 27_009_346_304  # text model; vision not counted
    # one global layer in 6 (sliding_window_pattern's default)
    assert m.layer_types[4:7] == ("sliding_attention", "full_attention", "sliding_attention")
    assert m.layer_types.count("full_attention") == 10
    assert resolve_model("gemma-3-27b").num_params == m.num_params


def test_deepseek_v2_lite_mla_moe():
    config = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "first_k_dense_replace": 1,
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "moe_intermediate_size": 1408,
        "moe_layer_freq": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_attention_heads": 16,
        "num_experts_per_tok": 6,
        "num_hidden_layers": 27,
        "num_key_value_heads": 16,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "tie_word_embeddings": False,
        "topk_method": "greedy",
        "torch_dtype": "bfloat16",
        "v_head_dim": 128,
        "vocab_size": 102400,
    }  # deepseek-ai/DeepSeek-V2-Lite
    m = spec_from_config(config)
    assert m.is_mla and m.kv_bytes_per_token() == 27 * (512 + 64) * 2 == 31_104  # one latent, not K and V
    assert m.kv_bytes_per_token(tp=8) == m.kv_bytes_per_token()  # the latent is not split over tp
    # attention per layer: q 2048 x 16 x 192; kv_a 2048 x (512 + 64); kv_a norm 512; kv_b 512 x 16 x (128 + 128);
    # o 16 x 128 x 2048; 2 norms x 2048
    attention = 2048 * 16 * 192 + 2048 * 576 + 512 + 512 * 16 * 256 + 16 * 128 * 2048 + 2 * 2048
    dense = 3 * 2048 * 10944  # layer 0
    expert = 3 * 2048 * 1408
    router = 2048 * 64
    embeddings = 2 * 102400 * 2048
    moe = 26 * (64 * expert + 2 * expert + router)  # 64 routed + 2 shared
    assert m.num_params == embeddings + 27 * attention + dense + moe + 2048 == 15_706_484_224  # DeepSeek: 15.7B
    active_moe = 26 * (6 * expert + 2 * expert + router)
    assert m.active_params == embeddings + 27 * attention + dense + active_moe + 2048 == 2_661_150_208
    assert m.head_size == 192  # the query-key width


def test_deepseek_v3_preset():
    m = resolve_model("deepseek-ai/DeepSeek-V3")
    assert m.kv_bytes_per_token() == (512 + 64) * 61 * 2 == 70_272
    assert m.kv_bytes_per_token(tp=8) == 70_272
    assert abs(m.num_params / 671e9 - 1) < 0.01 and abs(m.active_params / 37e9 - 1) < 0.02
    # fp8 checkpoint: attention, MLP and expert matrices in 1 byte; embeddings, norms, router in bf16
    assert m.quantization == "fp8" and m.num_params < m.weight_bytes() < 1.01 * m.num_params


def test_gpt_oss_mxfp4_experts():
    m = resolve_model("openai/gpt-oss-20b")
    assert m.kv_bytes_per_token() == 2 * 24 * 8 * 64 * 2 == 49_152
    # attention per layer: q, o 2880 x 4096; k, v 2880 x 512; biases 4096 + 2 x 512 + 2880; sinks 64; 2 norms
    attention = 2 * 2880 * 4096 + 2 * 2880 * 512 + (4096 + 1024 + 2880) + 64 + 2 * 2880
    expert_matrices = 3 * 2880 * 2880  # gate_up 2880 x 5760, down 2880 x 2880
    expert_biases = 2 * 2880 + 2880
    router = 2880 * 32 + 32
    embeddings = 2 * 201088 * 2880
    total = embeddings + 24 * (attention + 32 * (expert_matrices + expert_biases) + router) + 2880
    assert m.num_params == total == 20_914_757_184  # OpenAI: 20.91B
    active = embeddings + 24 * (attention + 4 * (expert_matrices + expert_biases) + router) + 2880
    assert m.active_params == active == 4_187_440_704
    # mxfp4: the experts' matrices in 4.25 bits (17/32 B), the rest in bf16
    mx = 24 * 32 * expert_matrices
    assert m.weight_bytes() == mx * 17 // 32 + (total - mx) * 2 == 13_761_264_768
    assert m.sliding_window == 128 and m.layer_types[:2] == ("sliding_attention", "full_attention")


def test_phi3():
    config = {
        "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "max_position_embeddings": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32064,
    }  # microsoft/Phi-3-mini-4k-instruct
    m = spec_from_config(config)
    assert m.kv_bytes_per_token() == 2 * 32 * 32 * 96 * 2 == 393_216
    per_layer = 4 * 3072 * 3072 + 3 * 3072 * 8192 + 2 * 3072  # q, k, v, o; gate_up + down; 2 norms
    assert m.num_params == 2 * 32064 * 3072 + 32 * per_layer + 3072 == 3_821_079_552  # Microsoft: 3.8B


def test_shipped_presets_load_and_answer_to_every_name():
    for name in (
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "llama-3.3-70b",
        "qwen3-8b",
        "qwen3-32b",
        "qwen3-235b-a22b",
        "deepseek-v3",
        "gpt-oss-20b",
        "gpt-oss-120b",
        "gemma-3-27b",
        "mistral-small-24b",
        "mixtral-8x7b",
    ):
        assert name in MODELS and MODELS[name].kv_bytes_per_token() > 0
    spec = MODELS["llama-3.1-8b"]
    assert spec.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    for alias in ("llama-3.1-8b", "Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "LLAMA-3.1-8B-INSTRUCT"):
        assert resolve_model(alias) is spec
    assert resolve_model("OPT-13B") is MODELS["opt-13b"]  # the older presets answer in any case too
    assert spec.source == "meta-llama/Llama-3.1-8B-Instruct"


def test_qwen3_235b_a22b_total_and_active():
    m = resolve_model("Qwen/Qwen3-235B-A22B")
    assert abs(m.num_params / 235e9 - 1) < 0.02
    assert abs(m.active_params / 22e9 - 1) < 0.02
    assert m.kv_bytes_per_token() == 2 * 94 * 4 * 128 * 2


def test_roofline_uses_active_parameters():
    gpu = resolve_gpu("h100-80gb")
    for name in ("opt-13b", "llama-2-7b", "llama-2-70b", "llama-3-8b", "mistral-7b"):  # dense: as before
        m = MODELS[name]
        cost = RooflineCostModel(m, gpu, tp=2)
        assert cost.flops_per_token == 2 * m.num_params / 2 and cost.weight_bytes == m.weight_bytes(2)
    m = resolve_model("mixtral-8x7b")
    cost = RooflineCostModel(m, gpu)
    assert cost.flops_per_token == 2 * 12_879_925_248 and cost.weight_bytes == 12_879_925_248 * 2
    assert m.weight_bytes() == 46_702_792_704 * 2  # memory holds every expert


def test_kv_cache_dtype():
    assert resolve_model("llama-3.1-8b", kv_cache_dtype="fp8").kv_bytes_per_token() == 2 * 32 * 8 * 128 * 1
    assert resolve_model("llama-3.1-8b", kv_cache_dtype="auto").kv_dtype == "bf16"
    assert resolve_model("deepseek-v3", kv_cache_dtype="fp8").kv_bytes_per_token() == 576 * 61
    with pytest.raises(UserError, match="kv-cache-dtype"):
        resolve_model("llama-3.1-8b", kv_cache_dtype="int3")


def test_config_file_and_directory(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_31_8B))
    by_dir = resolve_model(str(folder))
    by_file = resolve_model(str(folder / "config.json"), max_model_len=4096)
    assert by_dir.name == "my-llama" and by_dir.num_params == 8_030_261_248
    assert by_file.max_model_len == 4096 and by_file.kv_bytes_per_token() == 131_072
    with pytest.raises(UserError, match="unknown model"):
        resolve_model(str(tmp_path))  # a directory without config.json


GOOD_TRACE = "arrival_s,prompt_tokens,output_tokens\n0,100,20\n0.5,200,10\n"


def replay(tmp_path, model, *extra):
    trace = tmp_path / "trace.csv"
    trace.write_text(GOOD_TRACE)
    return main(["replay", str(trace), "--model", model, "--out", str(tmp_path / "out"), "--force", "-q", *extra])


def without(key):
    return {k: v for k, v in LLAMA_31_8B.items() if k != key}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a model config"),
        (json.dumps(without("num_hidden_layers")), "num_hidden_layers is missing"),
        (json.dumps(without("vocab_size")), "vocab_size is missing"),
        (json.dumps({**LLAMA_31_8B, "architectures": ["FooForCausalLM"]}), "unknown architecture FooForCausalLM"),
        (json.dumps(without("architectures")), "architectures is missing"),
        (json.dumps({**LLAMA_31_8B, "num_key_value_heads": 5}), "num_key_value_heads"),
        (json.dumps({**LLAMA_31_8B, "torch_dtype": "int4"}), "torch_dtype"),
        (json.dumps({**LLAMA_31_8B, "hidden_size": "4096"}), "hidden_size must be an integer"),
        (
            json.dumps({"architectures": ["DeepseekV3ForCausalLM"], **without("architectures"), "kv_lora_rank": 512}),
            "qk_rope_head_dim is missing",
        ),
    ],
)
def test_bad_configs_exit_2_with_file_and_reason(tmp_path, capsys, text, reason):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert replay(tmp_path, str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and reason in err, err


def test_cli_reads_a_config_and_kv_cache_dtype(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_31_8B))
    assert replay(tmp_path, str(path), "--gpu", "h100-80gb") == 0
    assert "(131,072 KV bytes per token)" in capsys.readouterr().out
    assert replay(tmp_path, "Llama-3.1-8B", "--gpu", "h100-80gb", "--kv-cache-dtype", "fp8") == 0
    assert "(65,536 KV bytes per token)" in capsys.readouterr().out


def test_dimensions_without_heads_are_refused(tmp_path, capsys):
    assert replay(tmp_path, "layers=32,kv_heads=8,head_size=128,params=8e9,max_len=8192") == 2
    assert "model dimensions missing: heads" in capsys.readouterr().err


def test_load_config_names_the_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_config(str(tmp_path / "nope.json"))
