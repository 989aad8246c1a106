"""One intake for both clocks: the simulator's engine and the GPU replay reject the same requests for the same
reasons and count the same preemptions (sim.serving.intake).

The trace, worked out by hand on the tiny model with a KV cache of 4 blocks of 8 tokens (32 token slots), all
requests at t = 0:
- request 0: 1 + 1 tokens: admitted, finishes at the end of the first iteration (its one block comes back);
- request 1: 200 + 5 tokens: over the max model length of 128;
- request 2: 40 + 2 tokens: 41 tokens need 6 blocks of the 4 (the allocator's never_fits);
- request 3: 2 parallel samples of 8 + 20 tokens (27 tokens each, 4 blocks each when alone): the prompt fills one
  shared block; from token 9 each branch takes blocks of its own (block 0 shared, 2 + 2 more: 5 > 4), so at token 17
  the second branch finds no block while the request runs alone. It is preempted once, and the next iteration is
  empty: it cannot be completed even alone.

Before the intake was shared, the GPU replay counted no preemption here and said "cannot be placed even in an empty
KV cache" for request 3.
"""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.serving.replay import replay  # noqa: E402
from tests.harness._harness_testutil import DEVICE, DTYPE, tiny_options, trace_file  # noqa: E402

ROWS = [(0, 1, 1, 1), (0, 200, 5, 1), (0, 40, 2, 1), (0, 8, 20, 2)]


def test_engine_and_gpu_replay_reject_and_count_alike(tmp_path):
    trace = trace_file(tmp_path, ROWS, header="arrival_s,prompt_tokens,output_tokens,n")
    opts = tiny_options(4)
    run = GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False))
    measured, predicted = gpu_replay(trace, run), replay(trace, opts)
    for result in (measured, predicted):
        rejection = result.requests.rejection
        assert rejection[0] is None and not np.isnan(result.requests.finish_s[0])
        assert rejection[1] == "prompt + output = 205 tokens exceeds the max model length of 128"
        assert rejection[2] == "needs 6 blocks; the KV cache has 4"
        assert rejection[3] == "cannot be completed even alone in KV cache (2 sequences of up to 27 tokens)"
        assert result.requests.preemptions.tolist() == [0, 0, 0, 1]
        assert result.summary["requests"] == {"total": 4, "completed": 1, "rejected": 3, "preemptions": 1}
    assert measured.requests.rejection == predicted.requests.rejection
