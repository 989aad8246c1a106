"""Writing a `Trace`: the native CSV, or Mooncake JSONL when it carries prompt hash ids (`write_trace` picks by the
file name)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from sim.errors import UserError
from sim.records.io import atomic_write
from sim.traces.model import Trace


def format_seconds(values: np.ndarray) -> list[str]:
    """Seconds with up to 7 decimals (100 ns, the resolution of Azure timestamps), trailing zeros dropped."""
    return [s.rstrip("0").rstrip(".") if "." in s else s for s in (f"{x:.7f}" for x in values.tolist())]


def _int_cells(values: np.ndarray, none_below: int | None = None) -> list[str]:
    cells = [str(v) for v in values.tolist()]
    if none_below is not None:
        cells = [c if v >= none_below else "" for c, v in zip(cells, values.tolist())]
    return cells


def trace_to_native_csv(trace: Trace) -> str:
    """The native CSV of a trace: arrival_s, prompt_tokens, output_tokens, then request_id and the optional columns
    it has (prefix_group is written empty for 'none')."""
    if trace.block_hashes is not None:
        raise UserError(
            "this trace carries Mooncake hash ids, which the native CSV cannot hold: write it to a .jsonl "
            "file (Mooncake format) instead"
        )
    names = ["arrival_s", "prompt_tokens", "output_tokens"]
    cols = [format_seconds(trace.arrival_s), _int_cells(trace.prompt_tokens), _int_cells(trace.output_tokens)]
    if trace.request_id is not None:
        if any("," in r or '"' in r or "\n" in r for r in trace.request_id):
            raise UserError("a request_id contains a comma, quote or newline and cannot be written to the native CSV")
        names.append("request_id")
        cols.append(list(trace.request_id))
    for name, values in trace.columns.items():
        names.append(name)
        if name == "prefix_group":
            cols.append(_int_cells(values, none_below=0))
        elif np.issubdtype(values.dtype, np.integer):
            cols.append(_int_cells(values))
        else:
            cols.append([repr(float(v)) for v in values.tolist()])
    lines = [",".join(names)]
    lines.extend(",".join(cells) for cells in zip(*cols))
    return "\n".join(lines) + "\n"


def trace_to_mooncake_jsonl(trace: Trace) -> str:
    """Mooncake JSONL: timestamp in milliseconds (integer when whole), lengths, hash_ids (empty without ids)."""
    out = []
    for i in range(len(trace)):
        ms = round(float(trace.arrival_s[i]) * 1000.0, 4)
        record = {
            "timestamp": int(ms) if ms.is_integer() else ms,
            "input_length": int(trace.prompt_tokens[i]),
            "output_length": int(trace.output_tokens[i]),
            "hash_ids": trace.hash_ids(i).tolist(),
        }
        out.append(json.dumps(record))
    return "\n".join(out) + "\n"


def write_trace(trace: Trace, path: str) -> str:
    """Write `trace` to `path` atomically: Mooncake JSONL when the name ends in .jsonl, else the native CSV; '-' is
    standard output (native CSV). Returns the format written."""
    jsonl = path.lower().endswith(".jsonl")
    text = trace_to_mooncake_jsonl(trace) if jsonl else trace_to_native_csv(trace)
    if path == "-":
        sys.stdout.write(text)
    else:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise UserError(f"cannot write {path}: no directory {directory}")
        atomic_write(path, text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # an ordinary file, not the private mode of the temporary one
    return "mooncake" if jsonl else "native"
