"""Trace readers: one module per file format, registered in `READERS`; `read_trace` is the entry point.

Every reader turns a file into the same `Trace`, reporting the first unusable row as `file:line: reason` (line 1 is
the header of a CSV file, the first record of a JSONL file). Readers are chosen by the file's content -- the CSV
header, or the keys of the first JSON record -- or by name with `--format`:

=========  =====================================================================  ================================
name       columns / keys                                                         arrivals
=========  =====================================================================  ================================
native     arrival_s, prompt_tokens, output_tokens [, request_id, n, beam_width,  seconds, as given
           prefix_group, prefix_tokens]
azure      TIMESTAMP, ContextTokens, GeneratedTokens (Azure LLM inference traces  wall clock, relative to row 1
           2023 and 2024; a UTC offset such as +00:00 is applied; a plain
           number is read as seconds)
vidur      arrived_at, num_prefill_tokens, num_decode_tokens (Vidur / Splitwise   seconds, as given
           processed traces)
burstgpt   Timestamp, Model, Request tokens, Response tokens, Total tokens,       seconds, as given
           Log Type (BurstGPT); rows with 0 response tokens are failed requests,
           skipped and counted; `model_filter` keeps one model's rows
lengths    num_prefill_tokens, num_decode_tokens [, ...] -- no arrival column     generated: Poisson at `rate`,
                                                                                  seeded with `seed`
mooncake   JSONL: {"timestamp": ms, "input_length", "output_length",             milliseconds, as given
           "hash_ids": [...]}
=========  =====================================================================  ================================
"""

from __future__ import annotations

import math

from sim.errors import TraceError, UserError
from sim.traces.model import Trace
from sim.traces.readers import azure, burstgpt, lengths, mooncake, native, vidur, vllm_bench
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import open_text, read_jsonl, split_csv

__all__ = ["READERS", "ReadOptions", "Reader", "detect_format", "read_trace"]

# Detection takes the first match, in this order.
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        native.READER,
        azure.READER,
        vidur.READER,
        burstgpt.READER,
        lengths.READER,
        mooncake.READER,
        vllm_bench.READER,  # `vllm bench serve --save-result --save-detailed` results (JSON)
    )
}


def _looks_like_jsonl(text: str) -> bool:
    return text.lstrip().startswith("{")


def _choose_reader(path: str, text: str, format: str | None) -> tuple[Reader, list[str], object]:
    if format is not None:
        if format not in READERS:
            raise TraceError(path, 0, f"unknown trace format {format!r}; known: {', '.join(READERS)}")
        reader = READERS[format]
    else:
        reader = None
    kind = reader.kind if reader is not None else ("jsonl" if _looks_like_jsonl(text) else "csv")
    if kind == "jsonl":
        records = read_jsonl(path, text)
        first_line, first = records[0]
        if not isinstance(first, dict):
            raise TraceError(path, first_line, f"expected a JSON object, got {type(first).__name__}")
        header, data = list(first), records
    else:
        header, data = split_csv(path, text)
    if reader is None:
        matches = [r for r in READERS.values() if r.kind == kind and r.detect(header)]
        if not matches:
            what = "keys of the first record" if kind == "jsonl" else "header"
            expected = "; or ".join(r.description for r in READERS.values() if r.kind == kind)
            raise TraceError(
                path,
                1 if kind == "csv" else records[0][0],
                f"unrecognised {what} ({', '.join(header)}): expected {expected} (or force one with --format)",
            )
        reader = matches[0]
    return reader, header, data


def detect_format(path: str) -> str:
    """The name of the reader that `read_trace` would choose for this file."""
    return _choose_reader(path, open_text(path), None)[0].name


def read_trace(
    path: str, format: str | None = None, *, rate: float | None = None, seed: int = 0, model_filter: str | None = None
) -> Trace:
    """Read and validate a trace.

    Args:
        path: the trace file.
        format: a name in READERS; None detects it from the CSV header or the first JSON record.
        rate: requests/s of the seeded Poisson arrivals generated for a length-only trace (required there, refused
            for traces that carry their own arrival times).
        seed: seed of those arrivals.
        model_filter: BurstGPT only: keep the rows of this model (case-insensitive), e.g. 'ChatGPT' or 'GPT-4'.
    Returns:
        The validated `Trace`. Raises TraceError (a UserError) naming file and line for the first unusable row.
    """
    if rate is not None and not (math.isfinite(rate) and rate > 0 and math.isfinite(1.0 / rate)):
        raise UserError(f"--rate must be a positive number of requests/s, got {rate:g}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise UserError(f"--seed must be an integer in [0, 2^64), got {seed!r}")
    reader, header, data = _choose_reader(path, open_text(path), format)
    if rate is not None and "rate" not in reader.accepts:
        raise UserError(
            f"--rate generates arrivals for length-only traces, but {path} is a {reader.name} trace "
            f"with its own arrival times (to change its rate, use `sim trace scale`)"
        )
    if model_filter is not None and "model_filter" not in reader.accepts:
        raise UserError(f"--model-filter applies to BurstGPT traces, but {path} is a {reader.name} trace")
    return reader.read(path, header, data, ReadOptions(rate=rate, seed=seed, model_filter=model_filter))
