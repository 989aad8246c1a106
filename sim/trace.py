"""Request traces: the validated in-memory form (`Trace`, compact numpy columns) and the file readers.

Every reader turns a file into the same `Trace`, reporting the first unusable row as `file:line: reason` (line 1 is
the header). Readers are registered in `READERS` and chosen by the file's header, or by name with `--format`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sim.errors import TraceError


@dataclass
class Trace:
    """Requests in arrival order, as parallel arrays (one entry per request).

    arrival_s: arrival time, seconds from the trace's start (non-decreasing, float64).
    prompt_tokens, output_tokens: lengths in tokens (int64, >= 1).
    request_id: the trace's own ids, or None (then ids are the row indices).
    columns: optional per-request columns that later features read (e.g. sharing), by name.
    """

    path: str
    format: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    request_id: list[str] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    skipped_rows: int = 0  # rows a reader skipped on purpose (e.g. failed requests), with the reason in notes
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0


@dataclass(frozen=True)
class Reader:
    name: str
    description: str
    detect: Callable[[list[str]], bool]  # header fields -> is it this format?
    read: Callable[[str, list[str], list[tuple[int, list[str]]]], Trace]  # path, header, (line, fields) rows


def _read_csv_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and non-blank data rows with their 1-based line numbers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows: list[tuple[int, list[str]]] = []
            for fields_ in reader:
                if not fields_ or all(not x.strip() for x in fields_):
                    continue
                if header is None:
                    header = [h.strip() for h in fields_]
                    header_line = reader.line_num
                else:
                    rows.append((reader.line_num, fields_))
    except FileNotFoundError:
        raise TraceError(path, 0, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, 0, "is a directory, not a trace file") from None
    except UnicodeDecodeError:
        raise TraceError(path, 0, "not a text file (cannot decode as UTF-8)") from None
    except csv.Error as exc:
        raise TraceError(path, reader.line_num, f"malformed CSV: {exc}") from None
    if header is None:
        raise TraceError(path, 0, "the file is empty")
    if not rows:
        raise TraceError(path, header_line, "no requests after the header")
    return header, rows


def column_index(path: str, header: list[str], name: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise TraceError(path, 1, f"missing column '{name}' (found: {', '.join(header)})") from None


def _cell(path: str, line: int, fields_: list[str], idx: int, name: str, ncols: int) -> str:
    if len(fields_) != ncols:
        raise TraceError(path, line, f"expected {ncols} fields, got {len(fields_)}")
    return fields_[idx].strip()


def positive_int_column(path: str, rows: list[tuple[int, list[str]]], idx: int, name: str, ncols: int,
                        minimum: int = 1) -> np.ndarray:
    """A column of integers >= minimum; the first bad cell is reported with its line."""
    out = np.empty(len(rows), dtype=np.int64)
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    for i, (line, fields_) in enumerate(rows):
        text = _cell(path, line, fields_, idx, name, ncols)
        try:
            value = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise TraceError(path, line, f"{name} must be {what}, got {text!r}") from None
            if not as_float.is_integer():
                raise TraceError(path, line, f"{name} must be {what}, got {text!r}") from None
            value = int(as_float)
        if value < minimum:
            raise TraceError(path, line, f"{name} must be {what}, got {text!r}")
        out[i] = value
    return out


def arrival_column(path: str, rows: list[tuple[int, list[str]]], idx: int, name: str, ncols: int) -> np.ndarray:
    """Non-negative, finite, non-decreasing seconds."""
    out = np.empty(len(rows), dtype=np.float64)
    previous = 0.0
    for i, (line, fields_) in enumerate(rows):
        text = _cell(path, line, fields_, idx, name, ncols)
        try:
            value = float(text)
        except ValueError:
            raise TraceError(path, line, f"{name} must be a number of seconds, got {text!r}") from None
        if not np.isfinite(value) or value < 0:
            raise TraceError(path, line, f"{name} must be a finite number >= 0, got {text!r}")
        if value < previous:
            raise TraceError(path, line, f"{name} must not decrease: {text} after {previous:g}")
        out[i] = previous = value
    return out


def ensure_non_decreasing(path: str, rows: list[tuple[int, list[str]]], seconds: np.ndarray, name: str) -> None:
    bad = np.nonzero(np.diff(seconds) < 0)[0]
    if len(bad):
        i = int(bad[0]) + 1
        raise TraceError(path, rows[i][0], f"{name} must not decrease: {rows[i][1][0].strip()!r} comes after "
                                           f"{rows[i - 1][1][0].strip()!r}")


# --- native ------------------------------------------------------------------------------------------------------
NATIVE_REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")


def _read_native(path: str, header: list[str], rows: list[tuple[int, list[str]]]) -> Trace:
    idx = {name: column_index(path, header, name) for name in NATIVE_REQUIRED}
    n = len(header)
    trace = Trace(
        path=path, format="native",
        arrival_s=arrival_column(path, rows, idx["arrival_s"], "arrival_s", n),
        prompt_tokens=positive_int_column(path, rows, idx["prompt_tokens"], "prompt_tokens", n),
        output_tokens=positive_int_column(path, rows, idx["output_tokens"], "output_tokens", n),
    )
    if "request_id" in header:
        rid = header.index("request_id")
        trace.request_id = [fields_[rid].strip() for _, fields_ in rows]
    return trace


# --- Azure LLM inference traces ----------------------------------------------------------------------------------
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _read_azure(path: str, header: list[str], rows: list[tuple[int, list[str]]]) -> Trace:
    idx = {name: column_index(path, header, name) for name in AZURE_COLUMNS}
    n = len(header)
    stamps = [_cell(path, line, f, idx["TIMESTAMP"], "TIMESTAMP", n) for line, f in rows]
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
    except ValueError:
        for (line, _), text in zip(rows, stamps):
            try:
                np.datetime64(text, "ns")
            except ValueError:
                raise TraceError(path, line, f"TIMESTAMP must be a date and time like "
                                             f"'2023-11-16 18:17:03.9799600', got {text!r}") from None
        raise
    if np.isnat(times).any():
        line = rows[int(np.nonzero(np.isnat(times))[0][0])][0]
        raise TraceError(path, line, "TIMESTAMP is empty or not a time")
    seconds = (times - times[0]).astype(np.int64) / 1e9
    ensure_non_decreasing(path, rows, seconds, "TIMESTAMP")
    return Trace(
        path=path, format="azure", arrival_s=seconds,
        prompt_tokens=positive_int_column(path, rows, idx["ContextTokens"], "ContextTokens", n),
        output_tokens=positive_int_column(path, rows, idx["GeneratedTokens"], "GeneratedTokens", n),
    )


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("native", "arrival_s,prompt_tokens,output_tokens[,request_id]",
           lambda h: all(c in h for c in NATIVE_REQUIRED), _read_native),
    Reader("azure", "Azure LLM inference trace: TIMESTAMP,ContextTokens,GeneratedTokens",
           lambda h: all(c in h for c in AZURE_COLUMNS), _read_azure),
)}


def read_trace(path: str, format: str | None = None) -> Trace:
    """Read and validate a trace; the format is detected from the header unless given."""
    header, rows = _read_csv_rows(path)
    if format is not None:
        if format not in READERS:
            raise TraceError(path, 0, f"unknown trace format {format!r}; known: {', '.join(READERS)}")
        reader = READERS[format]
    else:
        matches = [r for r in READERS.values() if r.detect(header)]
        if not matches:
            raise TraceError(path, 1, f"unrecognised header ({', '.join(header)}): expected "
                                      f"{'; or '.join(r.description for r in READERS.values())}")
        reader = matches[0]
    return reader.read(path, header, rows)
