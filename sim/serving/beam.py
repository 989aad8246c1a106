"""The stochastic beam-search model: which beams are dropped and which survivors they fork from, step by step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BeamModel:
    """How beams survive and fork, one step at a time (seeded).

    After every token, each of a request's k beams is independently dropped with probability `replace_prob`, and
    each dropped beam is replaced by a fork of a surviving beam chosen uniformly (if every beam would be dropped, the
    first survives). Lineages therefore coalesce backwards in time like a Wright-Fisher population: the beams alive at
    any moment descend from a common ancestor a few steps back, so they share a long common history and differ only
    near the end — as real beam search does. Dropped beams free their blocks.
    """

    replace_prob: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.replace_prob <= 1:
            raise ValueError("beam replace probability must be in [0, 1]")
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def step(self, k: int) -> list[tuple[int, int]]:
        """(dropped beam index, surviving parent index) pairs for one step of k beams."""
        dropped = self.rng.random(k) < self.replace_prob
        survivors = [j for j in range(k) if not dropped[j]]
        if not survivors:
            survivors = [0]
            dropped[0] = False
        return [(j, survivors[int(self.rng.integers(len(survivors)))]) for j in range(k) if dropped[j]]
