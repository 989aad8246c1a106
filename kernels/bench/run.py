"""Settings every part of the benchmark reads: the device, the dtype and the case constants.

``RUN`` is the one mutable object: :meth:`Run.use_cpu_smoke` (``--cpu-smoke``) switches it to tiny CPU runs under the
Triton interpreter, to check the benchmark code without a GPU. Everything else reads it at call time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GB = 1e9
HEAD = 128
BLOCK = 16
WARMUP_MS = 10
REP_MS = 60
MAX_BYTES = 20 * GB  # skip cases whose KV (or its padded contiguous copy) exceeds this


@dataclass
class Run:
    dev: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    smoke: bool = False  # tiny shapes on the CPU under TRITON_INTERPRET

    def use_cpu_smoke(self) -> None:
        self.dev, self.smoke, self.dtype = "cpu", True, torch.float16


RUN = Run()
