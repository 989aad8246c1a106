"""Run directories and the files a replay writes into them (each written atomically)."""

from __future__ import annotations

import os
import time

from sim.errors import UserError
from sim.records.metrics import atomic_write, requests_csv, steps_csv, to_json
from sim.serving.replay import ReplayResult


def prepare_dir(out: str | None, stem: str, force: bool, root: str = "runs") -> str:
    """The directory to write into: `out`, or a new runs/<stem>-<timestamp> directory.

    An existing non-empty directory is refused unless force is set.
    """
    if out is None:
        base = os.path.join(root, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        out, n = base, 1
        while os.path.exists(out):
            n += 1
            out = f"{base}-{n}"
    elif os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out {out} exists and is not a directory")
        if os.listdir(out) and not force:
            raise UserError(f"--out {out} already exists and is not empty; use --force to overwrite its files")
    os.makedirs(out, exist_ok=True)
    return out


def write_replay(directory: str, result: ReplayResult, request_ids: list[str] | None) -> None:
    atomic_write(os.path.join(directory, "steps.csv"), steps_csv(result.steps))
    atomic_write(os.path.join(directory, "requests.csv"), requests_csv(result.requests, request_ids))
    # summary last: its presence means the run's files are complete
    atomic_write(os.path.join(directory, "summary.json"), to_json(result.summary))
