"""The per-request log: times in seconds on the trace's clock, preemptions, rejection reasons; written as
requests.csv."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestLog:
    """Per request (trace order): times in seconds from the trace's start (NaN when it never happened)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    admitted_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray
    rejection: list[str | None]
    num_seqs: np.ndarray  # sequences per request: parallel samples or beams (1 for most requests)
    # Pauses of a request's output: request -> [(time it last emitted, time it emitted again)], for the requests that
    # were preempted or passed over by the token budget after their first token (for inter-token latencies).
    pauses: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    paused_since: dict[int, float] = field(default_factory=dict)  # pauses still open: request -> last emission

    @classmethod
    def empty(
        cls,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        num_seqs: np.ndarray | None = None,
    ) -> RequestLog:
        n = len(arrival_s)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        seqs = np.ones(n, dtype=np.int64) if num_seqs is None else num_seqs
        return cls(
            arrival_s, prompt_tokens, output_tokens, nan(), nan(), nan(), np.zeros(n, dtype=np.int64), [None] * n, seqs
        )

    def select(self, rows: np.ndarray) -> RequestLog:
        """The log of the requests at `rows` (indices, in that order); pauses keep their new row numbers."""
        rows = np.asarray(rows, dtype=np.int64)
        new_row = {int(old): new for new, old in enumerate(rows)}
        return RequestLog(
            self.arrival_s[rows],
            self.prompt_tokens[rows],
            self.output_tokens[rows],
            self.admitted_s[rows],
            self.first_token_s[rows],
            self.finish_s[rows],
            self.preemptions[rows],
            [self.rejection[i] for i in rows.tolist()],
            self.num_seqs[rows],
            {new_row[i]: p for i, p in self.pauses.items() if i in new_row},
            {new_row[i]: t for i, t in self.paused_since.items() if i in new_row},
        )


REQUEST_COLUMNS = (
    "request",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "admitted_s",
    "first_token_s",
    "finish_s",
    "preemptions",
    "rejection",
)


def requests_csv(requests: RequestLog, request_ids: list[str] | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REQUEST_COLUMNS)
    fmt = lambda x: "" if math.isnan(x) else f"{x:.9g}"  # noqa: E731
    for i in range(len(requests.arrival_s)):
        w.writerow(
            (
                request_ids[i] if request_ids else i,
                fmt(requests.arrival_s[i]),
                int(requests.prompt_tokens[i]),
                int(requests.output_tokens[i]),
                fmt(requests.admitted_s[i]),
                fmt(requests.first_token_s[i]),
                fmt(requests.finish_s[i]),
                int(requests.preemptions[i]),
                requests.rejection[i] or "",
            )
        )
    return buf.getvalue()
