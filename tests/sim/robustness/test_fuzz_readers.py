"""Fuzzing every trace reader (native, azure, vidur, lengths, burstgpt, mooncake, vllm-bench) with hypothesis.

The promises checked, for any input:
- no traceback: reading raises nothing but TraceError / UserError;
- every refusal names the file, and the line (`file:line: reason`) unless it is about the whole file;
- no silent row loss: when a file reads, every line holding data became a request (or, for BurstGPT, a counted skip);
  for a vllm-bench result (one JSON document), every entry of its per-request lists did (or a counted failed one);
- valid files read back exactly the values written.

Inputs: valid traces drawn per format; the same with 1-3 random corruptions (characters inserted -- quotes, commas,
line breaks, signs, letters, NULs -- spans deleted or replaced, lines duplicated, swapped or cut; in a vllm-bench
result, one value or list entry replaced); arbitrary bytes, alone or after a valid header (or a whole vllm-bench
result); arbitrary text cells under a valid header; arbitrary JSON values in Mooncake records and vllm-bench results.
The "ci" profile (tests/conftest.py, the default) runs 60 examples per test; HYPOTHESIS_PROFILE=thorough runs 5,000.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from datetime import datetime

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sim.cli.main import main
from sim.errors import TraceError, UserError
from sim.traces.readers import READERS, read_trace

FORMATS = ["native", "azure", "vidur", "lengths", "burstgpt", "mooncake", "vllm-bench"]
JSON_FORMATS = ("mooncake", "vllm-bench")  # JSON lines; vllm-bench is one JSON document (a one-line file)
HEADERS = {
    "native": "arrival_s,prompt_tokens,output_tokens,request_id",
    "azure": "TIMESTAMP,ContextTokens,GeneratedTokens",
    "vidur": "arrived_at,num_prefill_tokens,num_decode_tokens",
    "lengths": "num_prefill_tokens,num_decode_tokens",
    "burstgpt": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
}
# Refusals about the whole file rather than a line (TraceError line 0).
WHOLE_FILE = (
    "the file is empty",
    "not a text file",
    "no usable requests",
    "no rows for model",
    "unknown trace format",
    "cannot read",
    "no such file",
    # vllm-bench: a result is one JSON object, so what is wrong with it is said of the file (the key and entry named)
    "not a vllm bench serve result",
    "a vllm bench serve result without per-request lists",
    "input_lens",
    "output_lens",
    "start_times",
    "errors ",
    "request_rate ",
    "none of its",
)

_DIR = tempfile.mkdtemp(prefix="kvsim-fuzz-")


def _path(name: str) -> str:
    return os.path.join(_DIR, name)


def read(path: str, fmt: str | None, kind: str | None = None):
    """read_trace, forcing format `fmt` (None: detect it), with a rate when the file is `kind` length-only."""
    rate = 2.0 if "lengths" in (fmt, kind) else None
    return read_trace(path, fmt, rate=rate)


def check_refusal(exc: BaseException, path: str, text: str | None) -> None:
    """A refusal is a UserError; a TraceError names this file, a line within it (or none: a whole-file reason) and a
    non-empty reason."""
    assert isinstance(exc, UserError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.strip() and "Traceback" not in message
    if not isinstance(exc, TraceError):
        assert "--rate" in message or "--model-filter" in message or path in message, message
        return
    assert exc.path == path and exc.reason.strip()
    if exc.line > 0:
        assert message == f"{path}:{exc.line}: {exc.reason}"
        if text is not None:
            assert exc.line <= len(re.split(r"\r\n|\r|\n", text)), (exc.line, message)
    else:
        assert message == f"{path}: {exc.reason}"
        assert exc.reason.startswith(WHOLE_FILE), message


def data_lines(text: str, jsonl: bool) -> int:
    """Lines after the header that hold data: each must become a request (or a counted skip) or be refused."""
    text = text.removeprefix("\ufeff")
    if jsonl:
        return sum(1 for line in text.replace("\r\n", "\n").split("\n") if line.strip())
    # The plain reader splits lines at \n (CRLF too); the csv module, used once the file holds a quote, also at \r.
    lines = re.split(r"\r\n|\r|\n", text) if '"' in text else text.replace("\r\n", "\n").split("\n")
    filled = [line for line in lines if any(not (c.isspace() or c in ',"') for c in line)]
    return max(len(filled) - 1, 0)  # less the header


def attempt(text: str | bytes, fmt: str | None, name: str = "t.csv", kind: str | None = None):
    """Writes the input, reads it; returns the trace, or None after checking the refusal."""
    path = _path(name)
    data = text.encode("utf-8") if isinstance(text, str) else text
    with open(path, "wb") as f:
        f.write(data)
    try:
        return read(path, fmt, kind)
    except Exception as exc:  # noqa: BLE001 - any other exception is the failure being looked for
        check_refusal(exc, path, data.decode("utf-8", "replace"))
        return None


# --- valid traces, per format --------------------------------------------------------------------------------------
tokens = st.integers(1, 10**6)
gaps = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)


def _times(gap_list: list[float], start: float) -> list[float]:
    out, t = [], start
    for g in gap_list:
        t += g
        out.append(t)
    return out


@st.composite
def valid_trace(draw, fmt: str):
    """(text, expected) where expected holds the columns the reader must return."""
    n = draw(st.integers(1, 12))
    prompt = draw(st.lists(tokens, min_size=n, max_size=n))
    output = draw(st.lists(tokens, min_size=n, max_size=n))
    start = draw(st.floats(0, 1e6, allow_nan=False))
    arrivals = _times(draw(st.lists(gaps, min_size=n, max_size=n)), start)
    expected = {"prompt": prompt, "output": output, "arrival": arrivals, "count": n, "skipped": 0}
    if fmt == "native":
        ids = draw(
            st.lists(
                st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=6), min_size=n, max_size=n
            )
        )
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(HEADERS["native"].split(","))
        for row in zip(arrivals, prompt, output, ids):
            w.writerow([repr(row[0]), row[1], row[2], row[3]])
        expected["ids"] = [i.strip() for i in ids]
        return buf.getvalue(), expected
    if fmt == "azure":
        style = draw(st.sampled_from(["2023", "2024", "seconds"]))
        if style == "seconds":
            stamps = [repr(a) for a in arrivals]
            expected["arrival"] = [a - arrivals[0] for a in arrivals]
        else:
            base = np.datetime64("2023-11-16T18:17:03", "ns") + np.timedelta64(draw(st.integers(0, 10**15)), "ns")
            steps = draw(st.lists(st.integers(0, 10**13), min_size=n, max_size=n))
            utc = base + np.cumsum(np.array(steps, dtype=np.int64)).astype("timedelta64[ns]")
            if style == "2023":
                utc = utc.astype("datetime64[us]").astype("datetime64[ns]") + np.timedelta64(100, "ns") * draw(
                    st.integers(0, 9)
                )
                utc = np.sort(utc)
                stamps = [str(u).replace("T", " ")[:27] for u in utc]
            else:
                utc = np.sort(utc.astype("datetime64[us]"))
                offsets = draw(st.lists(st.integers(-14 * 60, 14 * 60), min_size=n, max_size=n))
                stamps = []
                for u, m in zip(utc, offsets):
                    local = str(u + np.timedelta64(m, "m")).replace("T", " ")
                    sign = "+" if m >= 0 else "-"
                    stamps.append(f"{local}{sign}{abs(m) // 60:02d}:{abs(m) % 60:02d}")
                utc = utc.astype("datetime64[ns]")
            expected["arrival"] = ((utc - utc[0]).astype(np.int64) / 1e9).tolist()
        rows = [f"{s},{p},{o}" for s, p, o in zip(stamps, prompt, output)]
        return HEADERS["azure"] + "\n" + "\n".join(rows) + "\n", expected
    if fmt == "vidur":
        rows = [f"{a!r},{p},{o}" for a, p, o in zip(arrivals, prompt, output)]
        return HEADERS["vidur"] + "\n" + "\n".join(rows) + "\n", expected
    if fmt == "lengths":
        expected.pop("arrival")
        rows = [f"{p},{o}" for p, o in zip(prompt, output)]
        return HEADERS["lengths"] + "\n" + "\n".join(rows) + "\n", expected
    if fmt == "burstgpt":
        request = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
        response = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
        models = draw(st.lists(st.sampled_from(["ChatGPT", "GPT-4"]), min_size=n, max_size=n))
        keep = [q > 0 and r > 0 for q, r in zip(request, response)]
        assume(any(keep))
        rows = [
            f"{a!r},{m},{q},{r},{q + r},Conversation log" for a, m, q, r in zip(arrivals, models, request, response)
        ]
        expected.update(
            prompt=[q for q, k in zip(request, keep) if k],
            output=[r for r, k in zip(response, keep) if k],
            arrival=[a for a, k in zip(arrivals, keep) if k],
            count=sum(keep),
            skipped=n - sum(keep),
        )
        return HEADERS["burstgpt"] + "\n" + "\n".join(rows) + "\n", expected
    if fmt == "vllm-bench":
        return vllm_bench_result(draw, prompt, output, arrivals)
    assert fmt == "mooncake"
    ms = [round(a * 1000) for a in arrivals]
    lines = []
    for t, p, o in zip(ms, prompt, output):
        blocks = -(-p // 512)
        ids = draw(st.lists(st.integers(0, 2**63 - 1), max_size=min(blocks, 4)))
        lines.append(json.dumps({"timestamp": t, "input_length": p, "output_length": o, "hash_ids": ids}))
    expected["arrival"] = [t / 1000 for t in ms]
    return "\n".join(lines) + "\n", expected


def vllm_bench_expected(inputs: list, outputs: list, errors: list | None, starts: list | None) -> dict:
    """The columns a vllm-bench reading must return, worked out with plain Python: the requests without an error and
    with at least one output token, sorted by start time (ties in file order), arrivals relative to the first."""
    n = len(inputs)
    errors = [""] * n if errors is None else errors
    kept = [i for i in range(n) if int(outputs[i]) >= 1 and not errors[i]]
    out = {"count": len(kept), "skipped": n - len(kept)}
    if starts is not None:
        first = min(float(starts[i]) for i in kept)
        arrival = {i: float(starts[i]) - first for i in kept}
        kept.sort(key=lambda i: (arrival[i], i))
        out["arrival"] = [arrival[i] for i in kept]
    out.update(prompt=[int(inputs[i]) for i in kept], output=[int(outputs[i]) for i in kept])
    out["ids"] = [str(i) for i in kept]
    return out


def vllm_bench_result(draw, prompt: list[int], output: list[int], arrivals: list[float]) -> tuple[str, dict]:
    """A `vllm bench serve --save-result --save-detailed` result (vllm/benchmarks/serve.py, one JSON line): the
    per-request lists in the order requests were sent -- start times out of order when a request waited for a
    --max-concurrency slot -- some requests failed (an error, or no output tokens), and sometimes no start_times
    (older vLLM), where the arrivals are drawn: then only the order (the file's, arrivals never decreasing) is known,
    and with request_rate "inf" every arrival is 0."""
    n = len(prompt)
    starts = [a + 1000.0 for a in draw(st.permutations(arrivals))]  # time.perf_counter() values
    failed = draw(st.lists(st.sampled_from(["", "", "", "error", "no tokens"]), min_size=n, max_size=n))
    assume("" in failed)
    inputs = [0 if f and draw(st.booleans()) else p for p, f in zip(prompt, failed)]  # a failed one may have 0
    outputs = [0 if f else o for o, f in zip(output, failed)]
    errors = ["Bad Request: prompt too long" if f == "error" else "" for f in failed]
    rate = draw(st.sampled_from(["inf", 1.0, 7.5]))
    result = {
        "date": "20260101-120000", "endpoint_type": "vllm", "backend": "vllm", "label": None,
        "model_id": "meta-llama/Llama-2-7b-hf", "tokenizer_id": "meta-llama/Llama-2-7b-hf", "num_prompts": n,
        "request_rate": rate, "burstiness": 1.0, "max_concurrency": None, "duration": 12.5,
        "completed": n - sum(map(bool, failed)), "failed": sum(map(bool, failed)),
        "total_input_tokens": sum(inputs), "total_output_tokens": sum(outputs),
        "request_throughput": 1.2, "request_goodput": None, "output_throughput": 24.0, "total_token_throughput": 204.0,
        "input_lens": inputs, "output_lens": outputs, "ttfts": [0.05 if o else 0.0 for o in outputs],
        "itls": [[0.02] * (min(o, 3) - 1) if o else [] for o in outputs],
        "latencies": [0.43 if o else 0.0 for o in outputs], "start_times": starts,
        "generated_texts": ["ok" if o else "" for o in outputs], "errors": errors,
        "max_output_tokens_per_s": 50.0, "max_concurrent_requests": 2, "mean_ttft_ms": 50.0, "p99_ttft_ms": 59.8,
    }  # fmt: skip
    if draw(st.booleans()):  # a file of a vLLM version without start_times
        del result["start_times"]
        starts = None
    expected = vllm_bench_expected(inputs, outputs, errors, starts)
    if starts is None and rate == "inf":
        expected["arrival"] = [0.0] * expected["count"]
    return json.dumps(result) + "\n", expected


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_valid_traces_read_back_exactly(fmt, data):
    text, expected = data.draw(valid_trace(fmt))
    for forced in (fmt, None):  # by name, and detected
        trace = read(_write(text), forced, fmt)
        assert trace.format == fmt
        assert len(trace) == expected["count"] and trace.skipped_rows == expected["skipped"]
        assert trace.prompt_tokens.tolist() == expected["prompt"]
        assert trace.output_tokens.tolist() == expected["output"]
        if "arrival" in expected:
            np.testing.assert_allclose(trace.arrival_s, expected["arrival"], rtol=1e-12, atol=1e-6)
        if "ids" in expected:
            assert trace.request_id == expected["ids"]


def _write(text: str, name: str = "t.csv") -> str:
    path = _path(name)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


# --- corrupted traces ----------------------------------------------------------------------------------------------
NASTY = ',"\n\r \t-+.eE0123456789xZ:T{}[]\x00\ufeff\u2028é_naif'
snippets = st.one_of(st.text(st.sampled_from(NASTY), min_size=1, max_size=6), st.text(max_size=6))


# Values that readers have got wrong: numbers past int64 or a float, non-finite ones, epoch seconds where a date is
# expected, dates numpy misreads ('now', a bare year, outside 1678..2261), UTC offsets next to naive times.
EVIL_CELLS = [
    "", "0", "-1", "nan", "inf", "1e400", "1" + "0" * 400, str(2**63 - 1), str(2**64), str(2**70), "9" * 5000,
    "12.0", "1e3", "1.5", '"abc', 'a"b', '"a"b', "1700000000", "1700000000.5", "2023", "now", "today", "NaT",
    "1500-01-01 00:00:00", "2300-01-01 00:00:00", "2262-04-11 23:47:17", "1700-01-01 00:00:00",
    "2024-05-10 00:00:00+00:00", "2024-05-10 00:00:00-23:59", "2024-05-10 00:00:00+99:00", "2024-05-10T00:00:00Z",
    "2023-11-16 18:17:03.9799600", "2023-13-45 00:00:00", "2024-05-10 00:00:00+0100",
]  # fmt: skip
EVIL_JSON = [
    "null", "true", "-1", "0", "1.5", "1e400", "NaN", "Infinity", str(2**63), str(2**70), "1" + "0" * 400,
    "9" * 5000, '"5"', "[]", "{}", "[1, 2]", f"[{2**64}]", "[-1]", "[" * 3000,
]  # fmt: skip


VLLM_BENCH_VALUES = ("input_lens", "output_lens", "start_times", "errors", "request_rate", "burstiness", "completed")
_MARK = "\x00evil"


def _evil_result_value(draw, text: str) -> str:
    """A vllm-bench result with one value, or one entry of a per-request list, replaced by an evil JSON value (a text
    that no longer holds one JSON object is returned as it is)."""
    try:
        result = json.loads(text)
    except (ValueError, RecursionError):  # an earlier corruption broke it, or left "[" * 3000 in it
        return text
    if not isinstance(result, dict):
        return text
    key = draw(st.sampled_from(VLLM_BENCH_VALUES))
    if isinstance(result.get(key), list) and result[key] and draw(st.booleans()):
        result[key][draw(st.integers(0, len(result[key]) - 1))] = _MARK
    else:
        result[key] = _MARK
    return json.dumps(result).replace(json.dumps(_MARK), draw(st.sampled_from(EVIL_JSON)), 1) + "\n"


@st.composite
def corrupt(draw, text: str, jsonl: bool = False, ops: list[str] | None = None, doc: bool = False) -> str:
    """1-3 corruptions: characters inserted, deleted or replaced; lines duplicated, swapped or cut off; a cell (or JSON
    value) replaced by an evil value; a lone quote; a column named twice. `doc`: the text is one JSON document (a
    vllm-bench result), where a cell is one value or list entry, and a duplicated line is an appended result."""
    ops = ops or ["insert", "delete", "replace", "duplicate", "swap", "cut", "cell", "cell", "quote", "name"]
    for _ in range(draw(st.integers(1, 3)) if len(ops) > 1 else 1):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        op = draw(st.sampled_from(ops))
        lines = text.split("\n")
        if op == "insert":
            text = text[:i] + draw(snippets) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "replace":
            text = text[:i] + draw(snippets) + text[j:]
        elif op == "cut":
            text = text[:i]
        elif op == "quote":  # a quote that opens a field and never closes
            starts = [m.start() for m in re.finditer(r"(?<=[,\n])|^", text)] or [i]
            k = draw(st.sampled_from(starts))
            text = text[:k] + '"' + text[k:]
        elif op == "cell" and doc:
            text = _evil_result_value(draw, text)
        elif op == "cell":  # one whole cell, or one JSON value
            pattern = r"(?<=: )[^,}]+" if jsonl else r"(?<=[,\n])[^,\n]*|^[^,\n]*"
            spans = [m.span() for m in re.finditer(pattern, text, re.M)]
            if spans:
                a, b = draw(st.sampled_from(spans))
                text = text[:a] + draw(st.sampled_from(EVIL_JSON if jsonl else EVIL_CELLS)) + text[b:]
        elif op == "name" and not jsonl:  # header: one column renamed to another's name
            names = lines[0].split(",")
            if len(names) > 1:
                a, b = draw(st.integers(0, len(names) - 1)), draw(st.integers(0, len(names) - 1))
                names[a] = names[b]
                text = "\n".join([",".join(names), *lines[1:]])
        elif op == "name":  # JSON: a key written twice
            text = (
                text.replace('"output_lens"', '"input_lens"', 1)
                if doc
                else text.replace('"output_length"', '"input_length"', 1)
            )
        elif len(lines) > 1:
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "duplicate":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


def _python_int(text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
        assert value.is_integer(), text
        return int(value)


def expected_rows(text: str, fmt: str) -> dict:
    """An independent reading of a CSV that a reader accepted, with Python's int/float/datetime: the values the
    reader must have returned. A cell this cannot read fails the test (the reader should have refused it)."""
    lines = re.split(r"\r\n|\r|\n", text) if '"' in text else text.replace("\r\n", "\n").split("\n")
    split = (lambda line: next(csv.reader([line]))) if '"' in text else (lambda line: line.split(","))
    rows = [split(line) for line in lines if any(not (c.isspace() or c in ',"') for c in line)]
    header = [h.strip() for h in rows[0]]
    header[0] = header[0].removeprefix("\ufeff")
    body = [r for r in rows[1:] if not all(not c.strip() for c in r)]
    col = {name: [r[header.index(name)] for r in body] for name in header}
    names = {
        "native": ("prompt_tokens", "output_tokens", "arrival_s"),
        "vidur": ("num_prefill_tokens", "num_decode_tokens", "arrived_at"),
        "lengths": ("num_prefill_tokens", "num_decode_tokens", None),
        "azure": ("ContextTokens", "GeneratedTokens", None),
    }[fmt]
    out = {"prompt": [_python_int(c) for c in col[names[0]]], "output": [_python_int(c) for c in col[names[1]]]}
    if names[2]:
        out["arrival"] = [float(c) for c in col[names[2]]]
    if fmt == "azure":
        stamps = [c.strip() for c in col["TIMESTAMP"]]
        try:
            seconds = [float(s) for s in stamps]
            out["arrival"] = [s - seconds[0] for s in seconds]
        except ValueError:
            # fromisoformat reads both releases' stamps; a naive time minus an aware one raises TypeError, as it
            # should: such a file must be refused. (Python 3.11 reads 'now' or a bare year as no date at all.)
            times = [datetime.fromisoformat(s) for s in stamps]
            out["arrival"] = [(t - times[0]).total_seconds() for t in times]
    return out


def check_vllm_bench(trace, bad: str) -> None:
    """A vllm-bench reading of `bad` holds every request of its lists (or counts it as failed), and the values that
    plain Python reads there."""
    result = json.loads(bad.removeprefix("\ufeff"))  # the reader read it, so it is one JSON object
    oracle = vllm_bench_expected(
        result["input_lens"], result["output_lens"], result.get("errors"), result.get("start_times")
    )
    assert len(trace) + trace.skipped_rows == len(result["input_lens"]), "request lost"
    assert (len(trace), trace.skipped_rows) == (oracle["count"], oracle["skipped"])
    assert trace.prompt_tokens.tolist() == oracle["prompt"] and trace.output_tokens.tolist() == oracle["output"]
    if "arrival" in oracle:
        assert trace.request_id == oracle["ids"]
        np.testing.assert_allclose(trace.arrival_s, oracle["arrival"], rtol=1e-12, atol=1e-6)


def check_corrupted(fmt: str, text: str, expected: dict, bad: str) -> None:
    """`bad` (a corrupted `text`) is refused by line, or read with no row lost and no value read wrong."""
    jsonl = fmt in JSON_FORMATS
    for forced in (fmt, None):
        trace = attempt(bad, forced, "c.jsonl" if jsonl else "c.csv", fmt)
        if trace is None:
            continue
        if trace.format == "vllm-bench":  # one JSON document: its requests are list entries, not lines
            check_vllm_bench(trace, bad)
            assert np.all(np.diff(trace.arrival_s) >= 0) and np.isfinite(trace.arrival_s).all()
            assert (trace.prompt_tokens >= 1).all() and (trace.output_tokens >= 1).all()
            continue
        # Every line that holds data became a request or a counted skip: none was lost without a word.
        assert len(trace) + trace.skipped_rows == data_lines(bad, jsonl=trace.format == "mooncake"), "row lost"
        if trace.format == fmt and data_lines(bad, jsonl) == data_lines(text, jsonl):
            assert len(trace) + trace.skipped_rows == expected["count"] + expected["skipped"]
        assert np.all(np.diff(trace.arrival_s) >= 0) and np.isfinite(trace.arrival_s).all()
        assert (trace.prompt_tokens >= 1).all() and (trace.output_tokens >= 1).all()
        if trace.format in ("native", "vidur", "lengths", "azure"):  # no wrong answer without a word
            oracle = expected_rows(bad, trace.format)
            assert trace.prompt_tokens.tolist() == oracle["prompt"]
            assert trace.output_tokens.tolist() == oracle["output"]
            if "arrival" in oracle:
                np.testing.assert_allclose(trace.arrival_s, oracle["arrival"], rtol=1e-9, atol=2e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_corrupted_traces_are_read_whole_or_refused_by_line(fmt, data):
    text, expected = data.draw(valid_trace(fmt))
    check_corrupted(fmt, text, expected, data.draw(corrupt(text, jsonl=fmt in JSON_FORMATS, doc=fmt == "vllm-bench")))


# The two corruptions that lost rows or read values wrong, each on its own so that every example tries one.
@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_one_evil_value(fmt, data):
    text, expected = data.draw(valid_trace(fmt))
    bad = data.draw(corrupt(text, jsonl=fmt in JSON_FORMATS, ops=["cell"], doc=fmt == "vllm-bench"))
    check_corrupted(fmt, text, expected, bad)


# CSV only: a quote opening a cell is a CSV quoting error. In the JSON formats a stray quote is one of the characters
# `corrupt` inserts (and its "quote" op) in test_corrupted_traces_are_read_whole_or_refused_by_line.
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in JSON_FORMATS])
@given(data=st.data())
def test_one_quote_opening_a_cell(fmt, data):
    text, expected = data.draw(valid_trace(fmt))
    check_corrupted(fmt, text, expected, data.draw(corrupt(text, ops=["quote"])))


# --- arbitrary input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [*FORMATS, None])
@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_anything_else(fmt, blob):
    attempt(blob, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@given(blob=st.binary(max_size=300), newline=st.sampled_from([b"\n", b"\r\n", b""]))
def test_arbitrary_bytes_after_a_valid_header(fmt, blob, newline):
    heads = {
        "mooncake": b'{"timestamp": 0, "input_length": 5, "output_length": 5}',
        # a whole result: what follows it on its line, or on the next lines, is not part of it
        "vllm-bench": b'{"completed": 1, "input_lens": [5], "output_lens": [5], "start_times": [0.5], "errors": [""]}',
    }
    head = heads[fmt] if fmt in heads else HEADERS[fmt].encode()
    attempt(head + newline + blob, None, kind=fmt)


cells = st.one_of(
    st.text(max_size=8),
    st.text(st.sampled_from(NASTY), max_size=8),
    st.integers(-(2**80), 2**80).map(str),
    st.floats().map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-0", "1e400", "2024-05-10 00:00:00", "2024-05-10 00:00:00+00:00", "now"]),
)


# CSV only; the JSON formats get arbitrary JSON values instead (test_arbitrary_mooncake_records,
# test_arbitrary_vllm_bench_results).
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in JSON_FORMATS])
@given(rows=st.lists(st.lists(cells, min_size=1, max_size=7), min_size=1, max_size=6))
def test_arbitrary_cells_under_a_valid_header(fmt, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADERS[fmt].split(","))
    writer.writerows(rows)
    text = buf.getvalue()
    trace = attempt(text, fmt, kind=fmt)
    if trace is not None:
        assert len(trace) + trace.skipped_rows == data_lines(text, jsonl=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from([10**400, -1, 0, 2**63, 2**64]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@given(
    records=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "timestamp": json_values,
                "input_length": json_values,
                "output_length": json_values,
                "hash_ids": json_values,
            },
        ),
        min_size=1,
        max_size=5,
    )
)
def test_arbitrary_mooncake_records(records):
    lines = [json.dumps(r, allow_nan=True) for r in records]
    text = "\n".join(lines) + "\n"
    for forced in ("mooncake", None):
        trace = attempt(text, forced, "m.jsonl")
        if trace is not None:
            assert len(trace) == len(records)


@given(
    result=st.fixed_dictionaries(
        {},
        optional={
            **{key: st.lists(json_values, max_size=4) | json_values for key in VLLM_BENCH_VALUES},
            "request_throughput": json_values,
            "output_throughput": json_values,
        },
    ),
    n=st.integers(0, 4),
    entries=st.lists(st.integers(0, 10**6) | st.floats() | st.booleans() | st.none() | st.text(max_size=3)),
)
def test_arbitrary_vllm_bench_results(result, n, entries):
    # With n > 0, per-request lists of n entries each (arbitrary ones, then 1s), so that reading gets past the lengths.
    if n:
        for key in ("input_lens", "output_lens", "start_times", "errors"):
            if key in result or key in ("input_lens", "output_lens"):
                result[key] = (entries + [1] * n)[:n] if key != "errors" else [""] * n
    text = json.dumps(result) + "\n"
    for forced in ("vllm-bench", None):
        trace = attempt(text, forced, "r.json")
        if trace is not None:
            assert trace.format == "vllm-bench"
            check_vllm_bench(trace, text)


# --- through the command line --------------------------------------------------------------------------------------
def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_cli_stats_exits_0_or_2_without_traceback(fmt, data):
    text, _ = data.draw(valid_trace(fmt))
    bad = data.draw(corrupt(text, jsonl=fmt in JSON_FORMATS, doc=fmt == "vllm-bench"))
    path = _write(bad, "cli.jsonl" if fmt in JSON_FORMATS else "cli.csv")
    argv = ["trace", "stats", path] + (["--rate", "2"] if fmt == "lengths" else [])
    rc, err = run_cli(argv)
    assert rc in (0, 2), err
    assert "Traceback" not in err
    if rc == 2:
        assert err.startswith(f"sim: error: {path}") or "--rate" in err, err
        assert err.count("\n") == 1


def test_every_reader_is_fuzzed():
    assert sorted(READERS) == sorted(FORMATS)
