"""The read kernels of the cache-read experiment (``kernels.experiments.cache_read_ceiling``): each must read exactly
the K and V bytes of the cache once, so that its time is the time to read that layout. Checked on a tiny cache
against torch's sum of the same tensors."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _kernel_testutil import CUDA  # noqa: E402

from kernels.experiments import cache_read_ceiling  # noqa: E402


@pytest.mark.skipif(CUDA, reason="tiny CPU shapes; on the GPU the script checks its own sums at full size")
def test_layout_reads_sum_every_byte_once():
    # 2 sequences x 256 tokens x 8 KV heads x head 16, 16-token blocks; per-head reads in 2 parts, 1-8 heads per
    # program, whole-block reads in 4 parts. The timer is a stand-in: only the sums are checked here.
    rec = cache_read_ceiling.layout_case(
        "tiny", 2, 8, 256, 8, lambda fn: 1.0, head=16, dtype=torch.float16, parts_head=2, parts_row=4
    )
    reads = [
        "contiguous",
        "head_gather",
        "head_gather_inorder",
        "head_gather_s5",
        "head_gather_w8",
        "head2_gather",
        "head4_gather",
        "head8_gather",
        "row_read",
    ]
    assert all(rec["ok"].get(r) is True for r in reads), rec["ok"]
    assert rec["kv_bytes"] == 2 * 2 * 256 * 8 * 16 * 2
