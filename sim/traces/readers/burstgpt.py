"""BurstGPT: Timestamp, Model, Request tokens, Response tokens, Total tokens, Log Type.

Rows with 0 response tokens are failed requests, skipped and counted; `model_filter` keeps one model's rows."""

from __future__ import annotations

import numpy as np

from sim.errors import TraceError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import MAX_TOKENS, Rows, arrival_column, column_index, int_column

BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")


def _read_burstgpt(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in BURSTGPT_COLUMNS}
    arrivals = arrival_column(rows, idx["Timestamp"], "Timestamp")
    request = int_column(rows, idx["Request tokens"], "Request tokens", minimum=0, limit=MAX_TOKENS)
    response = int_column(rows, idx["Response tokens"], "Response tokens", minimum=0, limit=MAX_TOKENS)
    int_column(rows, idx["Total tokens"], "Total tokens", minimum=0)
    keep = np.ones(len(rows), dtype=bool)
    notes: list[str] = []
    if options.model_filter is not None:
        models = np.array([m.strip() for m in rows.column(idx["Model"])])
        keep = np.char.lower(models) == options.model_filter.strip().lower()
        if not keep.any():
            raise TraceError(
                path,
                0,
                f"no rows for model {options.model_filter!r} (models in this trace: "
                f"{', '.join(sorted(set(models.tolist())))})",
            )
        if (~keep).sum():
            notes.append(f"model filter {options.model_filter!r}: kept {int(keep.sum()):,} of {len(keep):,} rows")
    failed = keep & (response == 0)
    empty = keep & (response > 0) & (request == 0)
    keep &= ~failed & ~empty
    if failed.sum():
        notes.append(f"skipped {int(failed.sum()):,} failed requests (0 response tokens)")
    if empty.sum():
        notes.append(f"skipped {int(empty.sum()):,} requests with 0 request tokens")
    if not keep.any():
        raise TraceError(
            path, 0, "no usable requests: every row is a failed request (0 response tokens) or has 0 request tokens"
        )
    return Trace(
        path=path,
        format="burstgpt",
        arrival_s=arrivals[keep],
        prompt_tokens=request[keep],
        output_tokens=response[keep],
        skipped_rows=int(failed.sum() + empty.sum()),
        notes=notes,
    )


READER = Reader(
    "burstgpt",
    "BurstGPT: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
    lambda h: all(c in h for c in BURSTGPT_COLUMNS),
    _read_burstgpt,
    accepts=frozenset({"model_filter"}),
)
