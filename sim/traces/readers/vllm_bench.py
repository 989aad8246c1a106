"""`vllm bench serve --save-result --save-detailed` result files: the requests of a real benchmark run as a trace.

The file is the JSON object `vllm/benchmarks/serve.py` writes (`main_async`: `json.dump(result_json, ...)`, one line;
read at vllm-project/vllm commit 009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1). With `--save-detailed` it keeps the
per-request lists, in the order requests were sent: `input_lens` (prompt tokens), `output_lens` (output tokens; 0 for
a failed request), `start_times` (`time.perf_counter()` when the request was sent), `ttfts`, `itls`, `latencies`,
`generated_texts`, `errors` ("" when it succeeded). Without `--save-detailed` those lists are removed and the file
cannot be replayed.

- Requests: those that succeeded (no error and at least one output token); failed ones are skipped and counted.
- Arrivals: start_times[i] - the earliest start time of the requests kept, sorted (a request that waited for
  `--max-concurrency` was sent when a slot freed, so its start time includes that wait). Files of vLLM versions
  without `start_times` get the arrivals vLLM drew: all at 0 for `request_rate` "inf", else gamma gaps of shape
  `burstiness` at `request_rate` (Poisson for burstiness 1), scaled so the last is at requests / rate as vLLM does,
  seeded with --seed (vLLM's own draws cannot be recovered).
- request ids: the request's position in the file's lists.

A file of another shape stops with `file: reason` (exit status 2).
"""

from __future__ import annotations

import json
import math

import numpy as np

from sim.errors import TraceError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import MAX_TOKENS, open_text

FORMAT = "vllm-bench"
LIST_KEYS = ("input_lens", "output_lens")
# keys every `vllm bench serve` result of a generative model has; any of them marks a file as such a result
RESULT_KEYS = ("request_throughput", "output_throughput", "total_token_throughput")


def is_result(keys) -> bool:
    keys = set(keys)
    return bool(keys & set(LIST_KEYS)) or all(k in keys for k in RESULT_KEYS[:2]) and "completed" in keys


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _number(value: object) -> float | None:
    """A JSON number as a float; None for anything else, and for an integer past the float range (math.isfinite and
    float arithmetic raise OverflowError on those)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def load_result(path: str) -> dict:
    """The result object of a file: one JSON object (on one line, as vLLM writes it, or pretty-printed)."""
    text = open_text(path)
    if not text.strip():
        raise TraceError(path, 0, "the file is empty")
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(text.lstrip())
    except json.JSONDecodeError as exc:
        raise TraceError(path, 0, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise TraceError(path, 0, f"not usable JSON: {exc}") from None
    if text.lstrip()[end:].strip():
        raise TraceError(
            path, 0, "holds more than one JSON value (a file written with --append-result?): keep one result per file"
        )
    if not isinstance(value, dict):
        raise TraceError(path, 0, f"expected a vllm bench serve result (a JSON object), got {type(value).__name__}")
    return value


def _int_list(path: str, result: dict, key: str, minimum: int) -> list[int]:
    values = result[key]
    if not isinstance(values, list):
        raise TraceError(path, 0, f"{key} must be a list, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise TraceError(path, 0, f"{key}[{i}] must be an integer >= {minimum}, got {_shown(v)}")
        if v > MAX_TOKENS:
            raise TraceError(path, 0, f"{key}[{i}] is too large, got {_shown(v)}")
        out.append(v)
    return out


def _list(path: str, result: dict, key: str, n: int) -> list | None:
    values = result.get(key)
    if values is None:
        return None
    if not isinstance(values, list):
        raise TraceError(path, 0, f"{key} must be a list, got {type(values).__name__}")
    if len(values) != n:
        raise TraceError(path, 0, f"{key} has {len(values):,} entries but input_lens has {n:,}")
    return values


def succeeded(path: str, result: dict) -> np.ndarray:
    """Which requests of the file's lists succeeded (no error, at least one output token)."""
    inputs = result["input_lens"]
    n = len(inputs)
    outputs = _int_list(path, result, "output_lens", 0)
    errors = _list(path, result, "errors", n) or [""] * n
    return np.array([o >= 1 and not e for o, e in zip(outputs, errors, strict=True)], dtype=bool)


def _arrivals(path: str, result: dict, ok: np.ndarray, seed: int, notes: list[str]) -> np.ndarray:
    n = len(ok)
    starts = _list(path, result, "start_times", n)
    if starts is not None:
        for i, s in enumerate(starts):
            number = _number(s)
            if number is None or not math.isfinite(number):
                raise TraceError(path, 0, f"start_times[{i}] must be a number of seconds, got {_shown(s)}")
        times = np.asarray(starts, dtype=np.float64)[ok]
        if not math.isfinite(float(times.max()) - float(times.min())):  # e.g. -1e308 and 1e308
            raise TraceError(path, 0, "start_times span more seconds than a float holds")
        return times - times.min()
    raw_rate = result.get("request_rate", "inf")
    rate = _number(raw_rate)
    if raw_rate in ("inf", None) or (rate is not None and math.isinf(rate)):
        notes.append("no start_times in the file: every request arrives at 0 (request_rate inf)")
        return np.zeros(int(ok.sum()))
    if rate is None or not rate > 0:
        raise TraceError(path, 0, f'request_rate must be a positive number or "inf", got {_shown(raw_rate)}')
    burst = _number(result.get("burstiness", 1.0))
    if burst is None or not (burst > 0 and math.isfinite(burst)):
        burst = 1.0
    rng = np.random.Generator(np.random.PCG64(seed))
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        delays = np.cumsum(rng.gamma(shape=burst, scale=1.0 / (rate * burst), size=n))
        if delays[-1] > 0:  # vLLM rescales the draws so that the last request is sent at requests / rate
            delays *= (n / rate) / delays[-1]
    if not np.isfinite(delays).all():  # a rate so small that requests / rate is past the float range
        raise TraceError(
            path, 0, f"request_rate {_shown(raw_rate)} is too small: its arrivals are past the float range"
        )
    notes.append(
        f"no start_times in the file: arrivals drawn as vLLM draws them (gamma, burstiness {burst:g}, "
        f"{rate:g} requests/s), seed {seed}; vLLM's own draws are not in the file"
    )
    return delays[ok]


def trace_from_result(path: str, result: dict, seed: int = 0) -> Trace:
    """The trace of a result object (see the module docstring)."""
    missing = [k for k in LIST_KEYS if k not in result]
    if missing:
        if is_result(result):
            reason = "a vllm bench serve result without per-request lists (input_lens, output_lens): save it with "
            raise TraceError(path, 0, reason + "--save-result --save-detailed")
        raise TraceError(path, 0, f"not a vllm bench serve result: no {', '.join(missing)}")
    inputs = _int_list(path, result, "input_lens", 0)
    n = len(inputs)
    if n == 0:
        raise TraceError(path, 0, "input_lens is empty: the result holds no requests")
    _list(path, result, "output_lens", n)
    ok = succeeded(path, result)
    bad_input = [i for i in np.nonzero(ok)[0] if inputs[i] < 1]
    if bad_input:
        raise TraceError(path, 0, f"input_lens[{bad_input[0]}] must be a positive integer, got 0")
    if not ok.any():
        raise TraceError(path, 0, f"none of its {n:,} requests succeeded: nothing to replay")
    notes: list[str] = []
    arrival = _arrivals(path, result, ok, seed, notes)
    index = np.nonzero(ok)[0]
    order = np.argsort(arrival, kind="stable")
    prompt = np.asarray(inputs, dtype=np.int64)[ok][order]
    output = np.asarray(result["output_lens"], dtype=np.int64)[ok][order]
    skipped = n - int(ok.sum())
    if skipped:
        notes.append(f"{skipped:,} failed requests skipped (an error or no output tokens)")
    return Trace(
        path=path,
        format=FORMAT,
        arrival_s=arrival[order],
        prompt_tokens=prompt,
        output_tokens=output,
        request_id=[str(int(i)) for i in index[order]],
        skipped_rows=skipped,
        notes=notes,
    )


def _read(path: str, keys: list[str], records: list[tuple[int, object]], options: ReadOptions) -> Trace:
    if len(records) > 1:
        raise TraceError(
            path,
            records[1][0],
            "a second result (a file written with --append-result?): keep one result per file",
        )
    return trace_from_result(path, records[0][1], options.seed)


READER = Reader(
    FORMAT,
    "vllm bench serve --save-result --save-detailed JSON: {..., input_lens, output_lens, start_times, ...}",
    is_result,
    _read,
    kind="jsonl",
)
