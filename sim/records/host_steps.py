"""steps.csv's host-tier columns (sim.allocators.host_tier), for a replay with a host tier: per iteration, the host
blocks holding cached prefix blocks and swapped requests (bytes, after the iteration is scheduled), and the bytes
its copies move each way."""

from __future__ import annotations

from array import array

import numpy as np

from sim.records.steps import HOST_COLUMNS, StepLog


class HostStepLog(StepLog):
    """A StepLog that also records HOST_COLUMNS. record_iteration calls `note_batch` before each row; a
    fast-forwarded stretch copies nothing over the link (the schedulers stop stretches before any host copy), so
    each of its rows holds the tier's present contents and no bytes moved."""

    def __init__(self, host) -> None:
        super().__init__()
        self.host = host
        self._host = array("q")
        self._noted: tuple[int, ...] | None = None

    def note_batch(self, batch) -> None:
        m, b = self.host.memory(), self.host.block_bytes
        self._noted = (m.cached * b, m.swapped * b, batch.bytes_to_host, batch.bytes_to_gpu)

    def append(self, row: tuple) -> None:
        if self._noted is None:
            raise RuntimeError("an iteration was recorded without its host-tier figures (note_batch)")
        self._host.extend(self._noted)
        self._noted = None
        super().append(row)

    def _stretch_rows(self, rounds: int) -> None:
        m, b = self.host.memory(), self.host.block_bytes
        self._host.extend((m.cached * b, m.swapped * b, 0, 0) * rounds)

    def extend_stretch(self, ends, durations, num_seqs, waiting, bytes_per_token, plan) -> None:
        self._stretch_rows(plan.rounds)
        super().extend_stretch(ends, durations, num_seqs, waiting, bytes_per_token, plan)

    def extend_decode(self, ends, durations, num_seqs, waiting, bytes_per_token, plan) -> None:
        self._stretch_rows(plan.rounds)
        super().extend_decode(ends, durations, num_seqs, waiting, bytes_per_token, plan)

    def arrays(self) -> dict[str, np.ndarray]:
        out = super().arrays()
        table = np.frombuffer(self._host, dtype=np.int64).reshape(-1, len(HOST_COLUMNS)).astype(np.float64)
        for i, name in enumerate(HOST_COLUMNS):
            out[name] = table[:, i]
        return out


__all__ = ["HOST_COLUMNS", "HostStepLog"]
