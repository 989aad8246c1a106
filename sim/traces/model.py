"""Request traces: the validated in-memory form (`Trace`, compact numpy columns), the file readers and the writer.

Every reader turns a file into the same `Trace`, reporting the first unusable row as `file:line: reason` (line 1 is
the header of a CSV file, the first record of a JSONL file). Readers are registered in `READERS` and chosen by the
file's content -- the CSV header, or the keys of the first JSON record -- or by name with `--format`:

=========  =====================================================================  ================================
name       columns / keys                                                         arrivals
=========  =====================================================================  ================================
native     arrival_s, prompt_tokens, output_tokens [, request_id, n, beam_width,  seconds, as given
           prefix_group, prefix_tokens]
azure      TIMESTAMP, ContextTokens, GeneratedTokens (Azure LLM inference traces  wall clock, relative to row 1
           2023 and 2024; a UTC offset such as +00:00 is applied)
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

Parsing is vectorised (numpy converts whole columns of strings at once); only when a column does not convert is it
scanned row by row to find and report the first bad cell. A million-row CSV reads in about a second and its requests
take 24 bytes each (three numpy columns).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import compress
from operator import methodcaller

import numpy as np

from sim.errors import TraceError, UserError
from sim.records.metrics import atomic_write

MOONCAKE_BLOCK_TOKENS = 512  # tokens of prompt content named by one Mooncake hash id


@dataclass
class Trace:
    """Requests in arrival order, as parallel arrays (one entry per request).

    arrival_s: arrival time in seconds (non-decreasing, float64); the engine's clock starts at the first arrival.
    prompt_tokens, output_tokens: lengths in tokens (int64, >= 1).
    request_id: the trace's own ids, or None (then ids are the row indices).
    columns: optional per-request columns (numpy arrays, one entry per request) by name. The native reader fills:
      n              int64 >= 1: parallel samples per request (default 1); the prompt is shared by the n sequences.
      beam_width     int64 >= 1: beams kept by beam search (default 1 = no beam search); n <= beam_width when > 1.
      prefix_group   int64 >= 0, or -1 for none: requests of one group share the first tokens of their prompt.
      prefix_tokens  int64 >= 0 (0 when prefix_group is -1), <= prompt_tokens: how many leading prompt tokens this
                     request shares with the other requests of its group (two requests of a group share the first
                     min(prefix_tokens) tokens of the two).
      A column is present only when the file has it.
    block_hashes: prompt-content identity (Mooncake traces): (flat, offsets), int64 arrays, where request i's ids are
      flat[offsets[i]:offsets[i + 1]]. Id k of a request names the content of prompt tokens
      [k * block_hash_tokens, (k + 1) * block_hash_tokens); equal ids mean equal content (and, as ids are hashes of
      the whole prefix, an equal prefix). A request may have fewer ids than blocks: its remaining tokens are unique.
    block_hash_tokens: tokens per hashed block (512 in Mooncake traces; one such block spans several KV blocks).
    skipped_rows: rows a reader skipped on purpose (e.g. failed requests), with the reason in notes.
    notes: what a reader did that a user should know (skipped rows, ignored columns, generated arrivals).
    """

    path: str
    format: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    request_id: list[str] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    block_hashes: tuple | None = None
    block_hash_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def hash_ids(self, i: int) -> np.ndarray:
        """Request i's prompt block hash ids (empty when the trace has none)."""
        if self.block_hashes is None:
            return np.empty(0, dtype=np.int64)
        flat, offsets = self.block_hashes
        return flat[offsets[i] : offsets[i + 1]]

    def kv_block_keys(self, i: int, block_size: int) -> np.ndarray:
        """Content keys of request i's full KV blocks of `block_size` tokens that hash ids cover, in prompt order.

        KV block j holds prompt tokens [j * block_size, (j + 1) * block_size); it lies inside hashed block
        h = hash_ids(i)[j * block_size // block_hash_tokens] at position p within it, and its key is
        h * (block_hash_tokens // block_size) + p. Two KV blocks with equal keys hold equal content (and follow equal
        prefixes). Needs block_size to divide block_hash_tokens.
        """
        if block_size <= 0 or self.block_hash_tokens % block_size:
            raise ValueError(
                f"block size {block_size} does not divide the {self.block_hash_tokens}-token hashed "
                f"blocks of this trace"
            )
        ids = self.hash_ids(i)
        per = self.block_hash_tokens // block_size
        covered = min(int(self.prompt_tokens[i]), len(ids) * self.block_hash_tokens)
        j = np.arange(covered // block_size, dtype=np.int64)
        return ids[j // per] * per + j % per

    def select(self, index: np.ndarray | slice) -> Trace:
        """A new trace with the requests at `index` (a slice, an index array or a boolean mask), in that order."""
        idx = np.arange(len(self))[index]
        hashes = None
        if self.block_hashes is not None:
            flat, offsets = self.block_hashes
            lengths = (offsets[1:] - offsets[:-1])[idx]
            new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            if len(idx) and np.all(np.diff(idx) == 1):
                new_flat = flat[offsets[idx[0]] : offsets[idx[-1] + 1]].copy()
            else:
                new_flat = (
                    np.concatenate([flat[offsets[k] : offsets[k + 1]] for k in idx])
                    if len(idx)
                    else np.empty(0, dtype=np.int64)
                )
            hashes = (new_flat, new_offsets)
        return replace(
            self,
            arrival_s=self.arrival_s[idx].copy(),
            prompt_tokens=self.prompt_tokens[idx].copy(),
            output_tokens=self.output_tokens[idx].copy(),
            request_id=[self.request_id[k] for k in idx] if self.request_id is not None else None,
            columns={k: v[idx].copy() for k, v in self.columns.items()},
            notes=list(self.notes),
            block_hashes=hashes,
        )


@dataclass(frozen=True)
class ReadOptions:
    """Extras some formats need: arrivals for length-only traces, a model filter for BurstGPT."""

    rate: float | None = None  # requests/s of the Poisson arrivals generated for a length-only trace
    seed: int = 0
    model_filter: str | None = None


@dataclass(frozen=True)
class Reader:
    name: str
    description: str
    detect: Callable[[list[str]], bool]  # CSV header fields (or the first JSON record's keys) -> is it this format?
    read: Callable[
        ..., Trace
    ]  # (path, header, rows: Rows, options: ReadOptions) or, for JSONL, (path, keys, records, options)
    kind: str = "csv"  # "csv" or "jsonl"
    accepts: frozenset = frozenset()  # ReadOptions fields it uses besides seed: "rate", "model_filter"


# --- reading a CSV file column by column -------------------------------------------------------------------------
class Rows:
    """The data rows of a CSV file, held column by column as lists of strings.

    `column(j)` is column j's cells; `line(i)` is the 1-based line number of data row i. Iterating yields
    (line, fields) pairs, row by row (slow; for error paths and small files).
    """

    def __init__(self, path: str, header: list[str], columns: list[list[str]], lines: np.ndarray):
        self.path = path
        self.header = header
        self.columns = columns
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def line(self, i: int) -> int:
        return int(self.lines[i])

    def column(self, j: int) -> list[str]:
        return self.columns[j]

    def __iter__(self):
        for i in range(len(self)):
            yield self.line(i), [c[i] for c in self.columns]


def _is_blank(line: str) -> bool:
    return not line.strip(", \t\r")


def _open_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TraceError(path, 0, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, 0, "is a directory, not a trace file") from None
    except PermissionError:
        raise TraceError(path, 0, "permission denied") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TraceError(path, 0, "not a text file (cannot decode as UTF-8)") from None
    if "\x00" in text:
        raise TraceError(path, 0, "not a text file (contains NUL bytes)")
    return text


def _split_csv(path: str, text: str) -> tuple[list[str], Rows]:
    """Header and data rows. Plain files (no quotes) are split with str methods; quoted ones go through `csv`."""
    if '"' in text:
        return _split_csv_quoted(path, text)
    lines = text.replace("\r\n", "\n").split("\n")
    start = 0
    while start < len(lines) and _is_blank(lines[start]):
        start += 1
    if start == len(lines):
        raise TraceError(path, 0, "the file is empty")
    header = [h.strip() for h in lines[start].split(",")]
    header_line = start + 1
    body = lines[start + 1 :]
    # map() with C methods keeps these per-line passes out of the interpreter loop (a million lines in ~0.1 s each).
    kept_len = np.fromiter(map(len, map(methodcaller("strip", ", \t\r"), body)), dtype=np.int64, count=len(body))
    numbers = np.arange(header_line + 1, header_line + 1 + len(body), dtype=np.int64)
    if not kept_len.all():
        keep = kept_len > 0
        numbers = numbers[keep]
        body = list(compress(body, keep.tolist()))
    if not body:
        raise TraceError(path, header_line, "no requests after the header")
    ncols = len(header)
    counts = np.fromiter(map(methodcaller("count", ","), body), dtype=np.int64, count=len(body))
    bad = np.nonzero(counts != ncols - 1)[0]
    if len(bad):
        i = int(bad[0])
        raise TraceError(path, int(numbers[i]), f"expected {ncols} fields, got {int(counts[i]) + 1}")
    flat = ",".join(body).split(",")
    columns = [flat[j::ncols] for j in range(ncols)]
    return header, Rows(path, header, columns, numbers)


def _split_csv_quoted(path: str, text: str) -> tuple[list[str], Rows]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    records: list[list[str]] = []
    numbers: list[int] = []
    try:
        for fields_ in reader:
            if not fields_ or all(not x.strip() for x in fields_):
                continue
            if header is None:
                header = [h.strip() for h in fields_]
                header_line = reader.line_num
                continue
            if len(fields_) != len(header):
                raise TraceError(path, reader.line_num, f"expected {len(header)} fields, got {len(fields_)}")
            records.append(fields_)
            numbers.append(reader.line_num)
    except csv.Error as exc:
        raise TraceError(path, reader.line_num, f"malformed CSV: {exc}") from None
    if header is None:
        raise TraceError(path, 0, "the file is empty")
    if not records:
        raise TraceError(path, header_line, "no requests after the header")
    columns = [list(col) for col in zip(*records)]
    return header, Rows(path, header, columns, np.array(numbers, dtype=np.int64))


# --- column conversion: vectorised, with a row-by-row scan only to report the first bad cell -----------------------
def column_index(path: str, header: list[str], name: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise TraceError(path, 1, f"missing column '{name}' (found: {', '.join(header)})") from None


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None


def int_column(
    rows: Rows, j: int, name: str, minimum: int = 1, default: str | None = None, maximum: int | None = None
) -> np.ndarray:
    """Column j as int64 >= minimum ('12' and '12.0' both read as 12). Empty cells read as `default` when given."""
    col = rows.column(j)
    if default is not None:
        col = [c if c.strip() else default for c in col]
    what = (
        ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        if maximum is None
        else f"an integer from {minimum} to {maximum}"
    )
    try:
        values = np.array(col, dtype=np.int64)
    except (ValueError, OverflowError):
        try:
            as_float = np.array(col, dtype=np.float64)
        except ValueError:
            as_float = None
        if (
            as_float is not None
            and np.all(np.isfinite(as_float))
            and np.all(as_float == np.floor(as_float))
            and np.all(np.abs(as_float) < 2.0**62)
        ):
            values = as_float.astype(np.int64)
        else:
            for i, text in enumerate(col):
                value = _int_or_none(text.strip())
                if value is None:
                    raise TraceError(rows.path, rows.line(i), f"{name} must be {what}, got {text.strip()!r}")
                if not -(2**62) < value < 2**62:
                    raise TraceError(rows.path, rows.line(i), f"{name} is too large, got {text.strip()!r}")
            raise TraceError(rows.path, 0, f"{name}: a value is out of range")  # pragma: no cover
    bad = values < minimum
    if maximum is not None:
        bad |= values > maximum
    hit = np.nonzero(bad)[0]
    if len(hit):
        i = int(hit[0])
        raise TraceError(rows.path, rows.line(i), f"{name} must be {what}, got {col[i].strip()!r}")
    return values


def positive_int_column(rows: Rows, j: int, name: str) -> np.ndarray:
    return int_column(rows, j, name, minimum=1)


def float_column(rows: Rows, j: int, name: str, unit: str = "a number of seconds") -> np.ndarray:
    """Column j as finite float64 >= 0."""
    col = rows.column(j)
    try:
        values = np.array(col, dtype=np.float64)
    except ValueError:
        for i, text in enumerate(col):
            try:
                float(text)
            except ValueError:
                raise TraceError(rows.path, rows.line(i), f"{name} must be {unit}, got {text.strip()!r}") from None
        raise  # pragma: no cover
    hit = np.nonzero(~np.isfinite(values) | (values < 0))[0]
    if len(hit):
        i = int(hit[0])
        raise TraceError(rows.path, rows.line(i), f"{name} must be a finite number >= 0, got {col[i].strip()!r}")
    return values


def ensure_non_decreasing(rows: Rows, values: np.ndarray, j: int, name: str, quote: bool = False) -> None:
    """The first row whose value is below the previous row's is reported as '<name> must not decrease: b after a'."""
    bad = np.nonzero(np.diff(values) < 0)[0]
    if len(bad):
        i = int(bad[0]) + 1
        now, before = rows.column(j)[i].strip(), rows.column(j)[i - 1].strip()
        if quote:
            now, before = repr(now), repr(before)
        raise TraceError(rows.path, rows.line(i), f"{name} must not decrease: {now} after {before}")


def arrival_column(rows: Rows, j: int, name: str, scale: float = 1.0, unit: str = "a number of seconds") -> np.ndarray:
    """Non-negative, finite, non-decreasing times, times `scale` (e.g. 1e-3 for milliseconds)."""
    values = float_column(rows, j, name, unit)
    ensure_non_decreasing(rows, values, j, name)
    return values * scale if scale != 1.0 else values


def _ignored_columns_note(header: list[str], used: set[str]) -> list[str]:
    extra = [h for h in header if h not in used]
    return [f"ignored columns: {', '.join(extra)}"] if extra else []


# --- native ------------------------------------------------------------------------------------------------------
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
            trace.columns[name] = int_column(rows, header.index(name), name, minimum=1, default="1")
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
    trace.notes += _ignored_columns_note(header, set(NATIVE_REQUIRED) | set(NATIVE_OPTIONAL))
    return trace


# --- Azure LLM inference traces (2023, 2024) ---------------------------------------------------------------------
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _has_offset(stamp: str) -> bool:
    return stamp.endswith("Z") or (len(stamp) > 6 and stamp[-6] in "+-" and stamp[-3] == ":")


def _split_utc_offsets(stamps: list[str]) -> tuple[list[str], np.ndarray | None]:
    """'2024-05-10 00:00:00.009930+00:00' -> ('2024-05-10 00:00:00.009930', offset in ns), for numpy, which has no
    time zones. Stamps without an offset (the 2023 release) pass unchanged, with offset None."""
    if not any(_has_offset(s) for s in stamps):
        return stamps, None
    bases, offsets = [], np.zeros(len(stamps), dtype=np.int64)
    for i, s in enumerate(stamps):
        if s.endswith("Z"):
            bases.append(s[:-1])
        elif _has_offset(s) and s[-5:-3].isdigit() and s[-2:].isdigit():
            sign = 1 if s[-6] == "+" else -1
            offsets[i] = sign * (int(s[-5:-3]) * 60 + int(s[-2:])) * 60 * 10**9
            bases.append(s[:-6])
        else:
            bases.append(s)
    return bases, offsets


def _read_azure(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in AZURE_COLUMNS}
    stamps = [s.strip() for s in rows.column(idx["TIMESTAMP"])]
    bases, utc_offsets = _split_utc_offsets(stamps)
    example = "a date and time like '2023-11-16 18:17:03.9799600' or '2024-05-10 00:00:00.009930+00:00'"
    try:
        times = np.array(bases, dtype="datetime64[ns]")
        if utc_offsets is not None:
            times = times - utc_offsets.astype("timedelta64[ns]")
    except ValueError:
        for i, (text, base) in enumerate(zip(stamps, bases)):
            try:
                if np.isnat(np.datetime64(base, "ns")):
                    raise ValueError
            except ValueError:
                raise TraceError(path, rows.line(i), f"TIMESTAMP must be {example}, got {text!r}") from None
        raise  # pragma: no cover
    nat = np.nonzero(np.isnat(times))[0]
    if len(nat):
        i = int(nat[0])
        raise TraceError(path, rows.line(i), f"TIMESTAMP must be {example}, got {stamps[i]!r}")
    nanoseconds = (times - times[0]).astype(np.int64)
    ensure_non_decreasing(rows, nanoseconds, idx["TIMESTAMP"], "TIMESTAMP", quote=True)
    return Trace(
        path=path,
        format="azure",
        arrival_s=nanoseconds / 1e9,
        prompt_tokens=positive_int_column(rows, idx["ContextTokens"], "ContextTokens"),
        output_tokens=positive_int_column(rows, idx["GeneratedTokens"], "GeneratedTokens"),
        notes=_ignored_columns_note(header, set(AZURE_COLUMNS)),
    )


# --- Vidur / Splitwise processed traces, and length-only CSVs ------------------------------------------------------
VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


def _read_vidur(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in VIDUR_COLUMNS}
    return Trace(
        path=path,
        format="vidur",
        arrival_s=arrival_column(rows, idx["arrived_at"], "arrived_at"),
        prompt_tokens=positive_int_column(rows, idx["num_prefill_tokens"], "num_prefill_tokens"),
        output_tokens=positive_int_column(rows, idx["num_decode_tokens"], "num_decode_tokens"),
        notes=_ignored_columns_note(header, set(VIDUR_COLUMNS)),
    )


def poisson_arrivals(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """`count` Poisson arrival times at `rate` requests/s, the first at 0."""
    gaps = rng.exponential(1.0 / rate, size=max(count - 1, 0))
    out = np.zeros(count, dtype=np.float64)
    np.cumsum(gaps, out=out[1:])
    return out


def _read_lengths(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in LENGTH_COLUMNS}
    if options.rate is None:
        raise TraceError(
            path,
            1,
            "this trace has lengths but no arrival times (columns num_prefill_tokens, "
            "num_decode_tokens): give --rate REQUESTS_PER_S to generate Poisson arrivals",
        )
    prompt = positive_int_column(rows, idx["num_prefill_tokens"], "num_prefill_tokens")
    output = positive_int_column(rows, idx["num_decode_tokens"], "num_decode_tokens")
    arrivals = poisson_arrivals(len(prompt), options.rate, np.random.Generator(np.random.PCG64(options.seed)))
    return Trace(
        path=path,
        format="lengths",
        arrival_s=arrivals,
        prompt_tokens=prompt,
        output_tokens=output,
        notes=[
            f"arrivals generated: Poisson at {options.rate:g} requests/s, seed {options.seed}",
            *_ignored_columns_note(header, set(LENGTH_COLUMNS)),
        ],
    )


# --- BurstGPT ----------------------------------------------------------------------------------------------------
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")


def _read_burstgpt(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in BURSTGPT_COLUMNS}
    arrivals = arrival_column(rows, idx["Timestamp"], "Timestamp")
    request = int_column(rows, idx["Request tokens"], "Request tokens", minimum=0)
    response = int_column(rows, idx["Response tokens"], "Response tokens", minimum=0)
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


# --- Mooncake JSONL ----------------------------------------------------------------------------------------------
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def _read_jsonl(path: str, text: str) -> list[tuple[int, object]]:
    records = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TraceError(path, number, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not records:
        raise TraceError(path, 0, "the file is empty")
    return records


def _json_int(path: str, line: int, record: dict, key: str, minimum: int) -> int:
    value = record.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise TraceError(path, line, f"{key} must be {what}, got {json.dumps(value)}")
    return value


def _read_mooncake(path: str, keys: list[str], records: list[tuple[int, object]], options: ReadOptions) -> Trace:
    count = len(records)
    arrivals = np.empty(count, dtype=np.float64)
    prompt = np.empty(count, dtype=np.int64)
    output = np.empty(count, dtype=np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    flat: list[int] = []
    previous = -math.inf
    per = MOONCAKE_BLOCK_TOKENS
    for i, (line, record) in enumerate(records):
        if not isinstance(record, dict):
            raise TraceError(path, line, f"expected a JSON object, got {type(record).__name__}")
        for key in MOONCAKE_KEYS:
            if key not in record:
                raise TraceError(path, line, f"missing key '{key}'")
        stamp = record["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp) or stamp < 0:
            raise TraceError(
                path, line, f"timestamp must be a finite number of milliseconds >= 0, got {json.dumps(stamp)}"
            )
        if stamp < previous:
            raise TraceError(path, line, f"timestamp must not decrease: {json.dumps(stamp)} comes after {previous:g}")
        previous = stamp
        arrivals[i] = stamp / 1000.0
        prompt[i] = p = _json_int(path, line, record, "input_length", 1)
        output[i] = _json_int(path, line, record, "output_length", 1)
        ids = record.get("hash_ids", [])
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in ids):
            raise TraceError(path, line, "hash_ids must be a list of integers >= 0")
        blocks = -(-p // per)
        if len(ids) > blocks:
            raise TraceError(
                path, line, f"{len(ids)} hash_ids for input_length {p}: at most {blocks} blocks of {per} tokens"
            )
        flat.extend(ids)
        offsets[i + 1] = len(flat)
    try:
        flat_array = np.array(flat, dtype=np.int64)
    except OverflowError:
        raise TraceError(path, 0, "a hash id does not fit in 64 bits") from None
    return Trace(
        path=path,
        format="mooncake",
        arrival_s=arrivals,
        prompt_tokens=prompt,
        output_tokens=output,
        block_hashes=(flat_array, offsets),
        block_hash_tokens=per,
    )


# --- registry and entry point ------------------------------------------------------------------------------------
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        Reader(
            "native",
            "arrival_s,prompt_tokens,output_tokens[,request_id,n,beam_width,prefix_group,prefix_tokens]",
            lambda h: all(c in h for c in NATIVE_REQUIRED),
            _read_native,
        ),
        Reader(
            "azure",
            "Azure LLM inference trace: TIMESTAMP,ContextTokens,GeneratedTokens",
            lambda h: all(c in h for c in AZURE_COLUMNS),
            _read_azure,
        ),
        Reader(
            "vidur",
            "Vidur/Splitwise trace: arrived_at,num_prefill_tokens,num_decode_tokens",
            lambda h: all(c in h for c in VIDUR_COLUMNS),
            _read_vidur,
        ),
        Reader(
            "burstgpt",
            "BurstGPT: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
            lambda h: all(c in h for c in BURSTGPT_COLUMNS),
            _read_burstgpt,
            accepts=frozenset({"model_filter"}),
        ),
        Reader(
            "lengths",
            "length-only: num_prefill_tokens,num_decode_tokens (arrivals from --rate)",
            lambda h: all(c in h for c in LENGTH_COLUMNS) and "arrived_at" not in h,
            _read_lengths,
            accepts=frozenset({"rate"}),
        ),
        Reader(
            "mooncake",
            'Mooncake JSONL: {"timestamp", "input_length", "output_length", "hash_ids"}',
            lambda keys: all(k in keys for k in MOONCAKE_KEYS),
            _read_mooncake,
            kind="jsonl",
        ),
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
        records = _read_jsonl(path, text)
        first_line, first = records[0]
        if not isinstance(first, dict):
            raise TraceError(path, first_line, f"expected a JSON object, got {type(first).__name__}")
        header, data = list(first), records
    else:
        header, data = _split_csv(path, text)
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
    return _choose_reader(path, _open_text(path), None)[0].name


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
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise UserError(f"--rate must be a positive number of requests/s, got {rate:g}")
    reader, header, data = _choose_reader(path, _open_text(path), format)
    if rate is not None and "rate" not in reader.accepts:
        raise UserError(
            f"--rate generates arrivals for length-only traces, but {path} is a {reader.name} trace "
            f"with its own arrival times (to change its rate, use `sim trace scale`)"
        )
    if model_filter is not None and "model_filter" not in reader.accepts:
        raise UserError(f"--model-filter applies to BurstGPT traces, but {path} is a {reader.name} trace")
    return reader.read(path, header, data, ReadOptions(rate=rate, seed=seed, model_filter=model_filter))


# --- writing -----------------------------------------------------------------------------------------------------
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
