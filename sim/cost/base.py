"""The interface of a cost model: how long one scheduler iteration takes on the GPU (seconds).

Two implementations: `sim.cost.roofline.RooflineCostModel` (from the GPU's datasheet) and
`sim.cost.profile.ProfileCostModel` (fitted to measurements by `sim calibrate`). A model needs only `step_time` and
`describe`; the pure-decode methods the engine's fast-forward calls default to `step_time` of such batches, and a model
overrides them only to compute many iterations at once (bit-identically: tests/sim/cost/test_roofline.py and
tests/sim/cost/test_profile.py compare them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from sim.serving.request import Batch


class CostModel(ABC):
    @abstractmethod
    def step_time(self, batch: Batch) -> float:
        """Seconds one iteration running `batch` takes."""

    @abstractmethod
    def describe(self) -> dict:
        """What the summary records about the model (its kind and parameters)."""

    def decode_times(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        """Seconds of pure-decode iterations of num_seqs sequences reading context_tokens each (one entry per
        iteration): what `step_time` gives for such batches."""
        return np.array(
            [
                self.step_time(Batch(num_decode_seqs=num_seqs, decode_context_tokens=int(c)))
                for c in np.asarray(context_tokens)
            ],
            dtype=np.float64,
        )

    def decode_time_list(self, num_seqs: int, first_context: int, rounds: int) -> list[float]:
        """`decode_times` over the contexts first_context, first_context + num_seqs, ... (`rounds` of them), as
        Python floats."""
        context = first_context + num_seqs * np.arange(rounds, dtype=np.int64)
        return np.asarray(self.decode_times(num_seqs, context), dtype=np.float64).tolist()
