"""A trace file's rows, shared by the format readers: CSV split column by column (`split_csv`, `Rows`), JSONL
records (`read_jsonl`), and the column conversions that report the first unusable cell as `file:line: reason`.

Parsing is vectorised (numpy converts whole columns of strings at once); only when a column does not convert is it
scanned row by row to find and report the first bad cell. A million-row CSV reads in about a second.
"""

from __future__ import annotations

import csv
import io
import json
from itertools import compress
from operator import methodcaller

import numpy as np

from sim.errors import TraceError


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


def split_csv(path: str, text: str) -> tuple[list[str], Rows]:
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
    check_header(path, header, header_line)
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
    # strict: a quote that is never closed is an error (not a field that swallows the rest of the file), and so is
    # text after a closing quote ('"ab"c'). No column of a trace holds a line break, so a quoted field may not span
    # lines either: that is almost always an unclosed quote, which would silently merge the rows that follow.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    records: list[list[str]] = []
    numbers: list[int] = []
    start = 1
    try:
        for fields_ in reader:
            if reader.line_num != start:
                raise TraceError(path, start, _UNCLOSED_ON_LINE)
            start = reader.line_num + 1
            if not fields_ or all(not x.strip() for x in fields_):
                continue
            if header is None:
                header = [h.strip() for h in fields_]
                header_line = reader.line_num
                check_header(path, header, header_line)
                continue
            if len(fields_) != len(header):
                raise TraceError(path, reader.line_num, f"expected {len(header)} fields, got {len(fields_)}")
            records.append(fields_)
            numbers.append(reader.line_num)
    except csv.Error as exc:
        if reader.line_num != start:  # the record began on an earlier line: a quote opened there never closed
            raise TraceError(path, start, _UNCLOSED_ON_LINE) from None
        if str(exc) == "unexpected end of data":
            raise TraceError(path, start, "a quote opened on this line is never closed") from None
        raise TraceError(path, reader.line_num, f"malformed CSV: {exc}") from None
    if header is None:
        raise TraceError(path, 0, "the file is empty")
    if not records:
        raise TraceError(path, header_line, "no requests after the header")
    columns = [list(col) for col in zip(*records)]
    return header, Rows(path, header, columns, np.array(numbers, dtype=np.int64))


_UNCLOSED_ON_LINE = (
    "a quote opened on this line is not closed on it (an unclosed quote would swallow the rows after it; "
    "fields must not span lines)"
)


def check_header(path: str, header: list[str], line: int) -> None:
    """Refuse a header that names a column twice: which of the two would be read is a guess."""
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise TraceError(path, line, f"column '{name}' appears twice in the header")
        seen.add(name)


# --- JSONL
class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return record


# json.loads keeps the last of two equal keys without a word; this decoder refuses them (at the same speed).
_JSON = json.JSONDecoder(object_pairs_hook=_object_without_duplicates)


def read_jsonl(path: str, text: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-empty line; a file that is one JSON document spread over several lines (a
    pretty-printed `vllm bench serve` result) is one record at its first line."""
    records = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, _JSON.decode(line)))
        except json.JSONDecodeError as exc:
            if not records and (whole := _one_document(text)) is not None:
                return [(number, whole)]
            raise TraceError(path, number, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
        except _DuplicateKey as exc:
            raise TraceError(path, number, f"key {json.dumps(exc.key)} appears twice in one object") from None
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            raise TraceError(path, number, f"not usable JSON: {exc}") from None
        except RecursionError:
            raise TraceError(path, number, "not usable JSON: nested too deeply") from None
    if not records:
        raise TraceError(path, 0, "the file is empty")
    return records


def _one_document(text: str) -> object | None:
    """The text as one JSON object, or None when it is not one."""
    try:
        value = _JSON.decode(text.strip())
    except (ValueError, _DuplicateKey, RecursionError):
        return None
    return value if isinstance(value, dict) else None


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


# Token counts above this are refused as "too large": no model reads 4 billion tokens, and sums of such counts (e.g.
# prompt + output, or a trace's total) would overflow int64 silently.
MAX_TOKENS = 2**32 - 1
MAX_INT = 2**62 - 1  # any other integer column


def int_column(
    rows: Rows,
    j: int,
    name: str,
    minimum: int = 1,
    default: str | None = None,
    maximum: int | None = None,
    limit: int = MAX_INT,
) -> np.ndarray:
    """Column j as int64 >= minimum ('12' and '12.0' both read as 12). Empty cells read as `default` when given.

    A value above `limit` is reported as too large; one below `minimum` or above `maximum` as out of range."""
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
                if value is None or value < minimum or (maximum is not None and value > maximum):
                    raise TraceError(rows.path, rows.line(i), f"{name} must be {what}, got {text.strip()!r}") from None
                if value > limit:
                    raise TraceError(rows.path, rows.line(i), f"{name} is too large, got {text.strip()!r}") from None
            raise TraceError(rows.path, 0, f"{name}: a value is out of range") from None  # pragma: no cover
    bad = (values < minimum) | (values > limit)
    if maximum is not None:
        bad |= values > maximum
    hit = np.nonzero(bad)[0]
    if len(hit):
        i = int(hit[0])
        value = int(values[i])
        if minimum <= value and (maximum is None or value <= maximum):
            raise TraceError(rows.path, rows.line(i), f"{name} is too large, got {col[i].strip()!r}")
        raise TraceError(rows.path, rows.line(i), f"{name} must be {what}, got {col[i].strip()!r}")
    return values


def positive_int_column(rows: Rows, j: int, name: str) -> np.ndarray:
    """A token count: an integer from 1 to MAX_TOKENS."""
    return int_column(rows, j, name, minimum=1, limit=MAX_TOKENS)


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


def ignored_columns_note(header: list[str], used: set[str]) -> list[str]:
    extra = [h for h in header if h not in used]
    return [f"ignored columns: {', '.join(extra)}"] if extra else []


def open_text(path: str) -> str:
    """A trace file's text (UTF-8, BOM dropped), or a TraceError naming the file and why it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TraceError(path, 0, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, 0, "is a directory, not a trace file") from None
    except PermissionError:
        raise TraceError(path, 0, "permission denied") from None
    except OSError as exc:  # a symlink loop, a path through a file, a name too long, an I/O error ...
        reason = exc.strerror or str(exc)
        raise TraceError(path, 0, f"cannot read: {reason[:1].lower()}{reason[1:]}") from None
    except ValueError as exc:  # a path with a NUL byte
        raise TraceError(path, 0, f"cannot read: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TraceError(path, 0, "not a text file (cannot decode as UTF-8)") from None
    if "\x00" in text:
        raise TraceError(path, 0, "not a text file (contains NUL bytes)")
    return text
