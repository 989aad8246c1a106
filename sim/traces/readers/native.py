"""The native CSV: arrival_s, prompt_tokens, output_tokens, and the optional per-request columns of `Trace`."""

from __future__ import annotations

import numpy as np

from sim.errors import TraceError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import (
    MAX_TOKENS,
    Rows,
    arrival_column,
    column_index,
    ignored_columns_note,
    int_column,
    positive_int_column,
)

NATIVE_REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")
NATIVE_OPTIONAL = ("request_id", "n", "beam_width", "prefix_group", "prefix_tokens")


def _read_native(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in NATIVE_REQUIRED}
    trace = Trace(
        path=path,
        format="native",
        arrival_s=arrival_column(rows, idx["arrival_s"], "arrival_s"),
        prompt_tokens=positive_int_column(rows, idx["prompt_tokens"], "prompt_tokens"),
        output_tokens=positive_int_column(rows, idx["output_tokens"], "output_tokens"),
    )
    if "request_id" in header:
        trace.request_id = [x.strip() for x in rows.column(header.index("request_id"))]
    for name in ("n", "beam_width"):
        if name in header:
            trace.columns[name] = int_column(rows, header.index(name), name, minimum=1, default="1", limit=MAX_TOKENS)
    if "n" in trace.columns and "beam_width" in trace.columns:
        n, beam = trace.columns["n"], trace.columns["beam_width"]
        hit = np.nonzero((beam > 1) & (n > beam))[0]
        if len(hit):
            i = int(hit[0])
            raise TraceError(
                path,
                rows.line(i),
                f"n ({n[i]}) must not exceed beam_width ({beam[i]}): beam search returns n of its beam_width beams",
            )
    has_group, has_tokens = "prefix_group" in header, "prefix_tokens" in header
    if has_group != has_tokens:
        present, missing = ("prefix_group", "prefix_tokens") if has_group else ("prefix_tokens", "prefix_group")
        raise TraceError(
            path,
            1,
            f"column '{present}' needs a '{missing}' column too (requests of a prefix group "
            f"share their first prefix_tokens tokens)",
        )
    if has_group:
        group = int_column(rows, header.index("prefix_group"), "prefix_group", minimum=-1, default="-1")
        tokens = int_column(rows, header.index("prefix_tokens"), "prefix_tokens", minimum=0, default="0")
        hit = np.nonzero(tokens > trace.prompt_tokens)[0]
        if len(hit):
            i = int(hit[0])
            raise TraceError(
                path,
                rows.line(i),
                f"prefix_tokens ({tokens[i]}) must not exceed prompt_tokens ({trace.prompt_tokens[i]})",
            )
        hit = np.nonzero((group < 0) & (tokens > 0))[0]
        if len(hit):
            i = int(hit[0])
            raise TraceError(
                path,
                rows.line(i),
                f"prefix_tokens is {tokens[i]} but prefix_group is empty: a prefix is shared within a group",
            )
        trace.columns["prefix_group"] = group
        trace.columns["prefix_tokens"] = tokens
    trace.notes += ignored_columns_note(header, set(NATIVE_REQUIRED) | set(NATIVE_OPTIONAL))
    return trace


READER = Reader(
    "native",
    "arrival_s,prompt_tokens,output_tokens[,request_id,n,beam_width,prefix_group,prefix_tokens]",
    lambda h: all(c in h for c in NATIVE_REQUIRED),
    _read_native,
)
