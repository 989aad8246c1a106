"""Length-only CSVs (num_prefill_tokens, num_decode_tokens, no arrival column): arrivals are generated, Poisson at
`rate`, seeded with `seed`."""

from __future__ import annotations

import numpy as np

from sim.errors import TraceError, UserError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import Rows, column_index, ignored_columns_note, positive_int_column

LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


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
    if not np.isfinite(arrivals[-1]):
        raise UserError(f"--rate {options.rate:g} is too low: the generated arrival times overflow")
    return Trace(
        path=path,
        format="lengths",
        arrival_s=arrivals,
        prompt_tokens=prompt,
        output_tokens=output,
        notes=[
            f"arrivals generated: Poisson at {options.rate:g} requests/s, seed {options.seed}",
            *ignored_columns_note(header, set(LENGTH_COLUMNS)),
        ],
    )


READER = Reader(
    "lengths",
    "length-only: num_prefill_tokens,num_decode_tokens (arrivals from --rate)",
    lambda h: all(c in h for c in LENGTH_COLUMNS) and "arrived_at" not in h,
    _read_lengths,
    accepts=frozenset({"rate"}),
)
