"""Shared set-up of the harness tests: a tiny model preset, the device and dtype the kernels run in (the Triton
interpreter on a machine without a GPU, which mishandles bf16), and trace files written on the spot."""

import torch

from sim.hardware.gpus import GPUS
from sim.hardware.models import resolve_model
from sim.serving.replay import ReplayOptions
from sim.traces.model import Trace
from sim.traces.readers import read_trace

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "bf16" if DEVICE == "cuda" else "fp32"
TINY = "layers=2,kv_heads=2,heads=4,head_size=16,hidden=64,intermediate=128,vocab=128,params=1e5,max_len=128,name=tiny"
BLOCK = 8


def tiny_options(blocks: int, **extra) -> ReplayOptions:
    """The tiny model on `paged` with a KV cache of `blocks` blocks of BLOCK tokens (h100-80gb), plus `extra`."""
    model = resolve_model(TINY)
    kw = dict(allocator="paged", block_size=BLOCK, kv_memory=blocks * BLOCK * model.kv_bytes_per_token())
    return ReplayOptions(model=model, gpu=GPUS["h100-80gb"], **{**kw, **extra})


def trace_file(tmp_path, rows, header: str = "arrival_s,prompt_tokens,output_tokens") -> Trace:
    """Write `rows` under `header` as a CSV in `tmp_path` and read it back as a Trace."""
    path = tmp_path / "t.csv"
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return read_trace(str(path))


def assert_replay_matches_simulation(meas, pred) -> None:
    """A GPU replay (`gpu_replay`) beside the simulation of the same trace: every attention check within tolerance and
    without NaN, every iteration checked, and the same batches and free memory, iteration by iteration."""
    import numpy as np

    h = meas.summary["harness"]
    assert meas.checks["within_tolerance"] and not meas.checks["nan"], meas.checks
    assert meas.checks["iterations_checked"] == h["iterations"]
    for col in ("running", "prefill_tokens", "decode_tokens", "preempted", "free_bytes"):
        np.testing.assert_array_equal(meas.steps[col], pred.steps[col], err_msg=col)


def execute_static_and_dynamic(run, static, dynamic, batch, new_slots):
    """Execute `batch` through the static-buffer executor, restore the pool, then through the dynamic one. Both must
    change exactly the slots in `new_slots` and write the same values there. Returns both execution results."""
    import torch

    before = run.pool.kv.clone()
    a = static.execute(batch, check=True)
    after_static = run.pool.kv.clone()
    run.pool.kv.copy_(before)
    b = dynamic.execute(batch, check=True)
    # Only the new tokens' slots changed, identically in both paths (padded rows and sequences wrote nothing).
    flat = lambda kv: kv.view(kv.shape[0], 2, -1, *kv.shape[-2:])  # noqa: E731
    changed = (flat(after_static) != flat(before)).flatten(3).any(-1).any(1).any(0).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(new_slots)
    torch.testing.assert_close(after_static, run.pool.kv, rtol=0, atol=0, equal_nan=True)
    return a, b


# A tiny hybrid dense model: Gemma-3-like interleaving of sliding-window and full layers on TINY's shapes, with 2 query
# heads on 1 KV head (half the interpreted kernel programs of TINY's 4 on 2). Its KV-cache groups
# (sim.hardware.kv_groups): 3 sliding layers and 2 full ones give a group size of 2, so sliding groups (0, 3) and (1,)
# (one padding layer page), and the full group (2, 4): 3 groups sharing 2 pool tensors.
HYBRID_TYPES = ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention")
HYBRID_WINDOW = 8
HYBRID_BLOCK = 4


def tiny_hybrid(window: int = HYBRID_WINDOW, layer_types=HYBRID_TYPES, max_len: int = 64):
    """TINY with sliding-window layers (a ModelSpec; dimension strings have no layer pattern)."""
    from dataclasses import replace

    from sim.hardware.models import resolve_model

    return replace(
        resolve_model(TINY),
        name="tiny-swa",
        num_layers=len(layer_types),
        num_q_heads=2,
        num_kv_heads=1,
        sliding_window=window,
        layer_types=tuple(layer_types),
        max_model_len=max_len,
    )


def tiny_hybrid_config(tmp_path, window: int = HYBRID_WINDOW, layer_types=HYBRID_TYPES, max_len: int = 64) -> str:
    """The same model as a Hugging Face config.json (for the CLI's --model); returns its path."""
    import json

    path = tmp_path / "tiny-swa.json"
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "num_hidden_layers": len(layer_types),
        "layer_types": list(layer_types),
        "sliding_window": window,
        "max_position_embeddings": max_len,
        "vocab_size": 128,
        "torch_dtype": "float32",
    }
    path.write_text(json.dumps(config))
    return str(path)
