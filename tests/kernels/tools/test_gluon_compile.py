"""The Gluon prefill kernel compiles for sm_90 without a GPU (kernels/tools/gluon_compile.py), spill-free and within the
H100's shared memory.

The kernel is written against triton 3.6, the lent H100's version; Gluon's API changes between releases, so these
tests run only where triton 3.6 is installed (they are skipped under other versions, as in CI).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(
    not triton.__version__.startswith("3.6."),
    reason=f"the Gluon kernel targets triton 3.6 (installed: {triton.__version__})",
)


def _compile(config, dtype=torch.bfloat16, group=1, head=128, paged=False, mixed=False, window=0, fp8=False):
    # a fresh process: this one runs triton under the interpreter (TRITON_INTERPRET=1), which cannot compile Gluon
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = (
        [
            sys.executable,
            "-m",
            "kernels.tools.gluon_compile",
            "--config",
            json.dumps(config),
            "--group",
            str(group),
            "--head",
            str(head),
            "--dtype",
            "bf16" if dtype == torch.bfloat16 else "fp16",
        ]
        + (["--paged"] if paged else [])
        + (["--mixed"] if mixed else [])
        + (["--window", str(window)] if window else [])
        + (["--fp8"] if fp8 else [])
    )
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [1, 4])
def test_default_kernel_compiles_without_spills(group, dtype):
    info = _compile({}, dtype, group)
    assert info["kernel"] == "_prefill_ws_kernel"
    assert info["stack_bytes"] == 0 and info["local_bytes"] == 0, info
    # 4 + 4 consumer warps and the loader warp's group of 4
    assert info["warps"] == 12
    # Q: 2 buffers x 2 halves x 64 x 128 x 2 B = 65,536; K and V: 2 stages x 128 x 128 x 2 B each = 131,072
    assert 65536 + 131072 <= info["shared_bytes"] <= 232448, info


def test_head_64_and_single_partition_forms_compile():
    ws = _compile({}, head=64)
    # Q 4 x 64 x 64 x 2 B + K/V 2 x 2 x 64 (block_n = head) x 64 x 2 B = 32,768 + 32,768
    assert 65536 <= ws["shared_bytes"] < 65536 + 4096 and ws["stack_bytes"] == 0
    single = _compile({"warp_specialize": False, "persistent": False, "pingpong": False})
    assert single["kernel"] == "_prefill_wgmma_kernel" and single["warps"] == 8
    # Q 128 x 128 x 2 B + 2 stages x (K + V) 128 x 128 x 2 B = 32,768 + 131,072
    assert 163840 <= single["shared_bytes"] <= 232448 and single["stack_bytes"] == 0


def test_paged_form_compiles():
    # the paged loader (block-table TMA copies, zeroing the V rows past a sequence's end) in both dtypes
    for dtype in (torch.float16, torch.bfloat16):
        info = _compile({}, dtype, group=4, paged=True)
        assert info["kernel"] == "_prefill_ws_kernel" and info["local_bytes"] == 0, info
        # as the default form, plus one barrier (v_landed): the loader's small stack frame (40 B) is not the consumers'
        assert 65536 + 131072 <= info["shared_bytes"] <= 232448 and info["stack_bytes"] <= 64, info


def test_mixed_form_compiles():
    info = _compile({}, torch.bfloat16, group=2, mixed=True)
    assert info["local_bytes"] == 0 and info["stack_bytes"] <= 64, info
    assert 65536 + 131072 <= info["shared_bytes"] <= 232448, info


def test_windowed_paged_form_compiles():
    # the sliding window (paged form): the loader's window edge and the consumers' second mask bound
    info = _compile({}, torch.bfloat16, group=4, paged=True, window=1024)
    assert info["kernel"] == "_prefill_ws_kernel" and info["local_bytes"] == 0, info
    assert 65536 + 131072 <= info["shared_bytes"] <= 232448 and info["stack_bytes"] <= 64, info


@pytest.mark.parametrize("window", [0, 1024])
def test_fp8_paged_form_compiles(window):
    # fp8 caches: rings of two fp8 staging tiles each for K and V beside the fp16 stages, and two converter warps
    info = _compile({}, torch.bfloat16, group=4, paged=True, window=window, fp8=True)
    assert info["kernel"] == "_prefill_ws_kernel" and info["local_bytes"] == 0 and info["stack_bytes"] <= 64, info
    # one Q buffer 2 x 64 x 128 x 2 = 32,768 + bf16 K and V stages 131,072 + fp8 staging 2 x 2 x 128 x 128 = 65,536,
    # within the 232,448 of an SM
    assert 32768 + 131072 + 65536 <= info["shared_bytes"] <= 232448, info


def test_fp8_shared_memory_refused():
    # two Q buffers and two fp8 staging tiles each: 65,536 + 131,072 + 65,536 > 232,448
    with pytest.raises(
        AssertionError, match=r"ValueError: prefill_wgmma: fp8 caches need .*q_buffers \+ fp8_stages <= 3"
    ):
        _compile({"q_buffers": 2}, torch.bfloat16, group=4, paged=True, fp8=True)
