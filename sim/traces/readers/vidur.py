"""Vidur / Splitwise processed traces: arrived_at, num_prefill_tokens, num_decode_tokens."""

from __future__ import annotations

from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import Rows, arrival_column, column_index, ignored_columns_note, positive_int_column

VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def _read_vidur(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in VIDUR_COLUMNS}
    return Trace(
        path=path,
        format="vidur",
        arrival_s=arrival_column(rows, idx["arrived_at"], "arrived_at"),
        prompt_tokens=positive_int_column(rows, idx["num_prefill_tokens"], "num_prefill_tokens"),
        output_tokens=positive_int_column(rows, idx["num_decode_tokens"], "num_decode_tokens"),
        notes=ignored_columns_note(header, set(VIDUR_COLUMNS)),
    )


READER = Reader(
    "vidur",
    "Vidur/Splitwise trace: arrived_at,num_prefill_tokens,num_decode_tokens",
    lambda h: all(c in h for c in VIDUR_COLUMNS),
    _read_vidur,
)
