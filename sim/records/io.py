"""Files: atomic writes, JSON, run directories and the files a replay writes into them."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from sim.records.requests import requests_csv
from sim.records.steps import steps_csv
from sim.records.vllm_bench import DEFAULT_PERCENTILES, vllm_bench_json

if TYPE_CHECKING:
    from sim.serving.replay import ReplayResult


def atomic_write(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    from sim.workers import signals_deferred

    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        # a signal held back while the file is created is delivered as the block ends, already inside this try
        with signals_deferred():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            raise OSError(exc.errno, exc.strerror, path) from exc  # name the file meant, not the temporary one
        raise


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def to_json(data) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2, default=_json_default) + "\n"


def prepare_dir(out: str | None, stem: str, force: bool, root: str = "runs") -> str:
    """The directory to write into: `out`, or a new runs/<stem>-<timestamp> directory (created, not locked; a run
    that writes results uses sim.records.rundir.open_run_dir, which also locks it)."""
    from sim.records.rundir import open_run_dir

    run = open_run_dir(out, stem, force, root)
    run.close()
    return run.path


def with_run_info(summary: dict) -> dict:
    """A summary with the run's provenance (`kvsim`: version, command, created_utc) added; figures unchanged."""
    from sim.records.rundir import run_info

    return {**summary, "kvsim": run_info()}


def write_replay(
    directory: str,
    result: ReplayResult,
    request_ids: list[str] | None,
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
) -> None:
    """steps.csv, requests.csv, vllm-bench.json (with these percentiles of each latency) and summary.json, last."""
    atomic_write(os.path.join(directory, "steps.csv"), steps_csv(result.steps))
    atomic_write(os.path.join(directory, "requests.csv"), requests_csv(result.requests, request_ids))
    bench = vllm_bench_json(result.summary, result.steps, result.requests, percentiles=percentiles)
    bench["kvsim"] = {**bench["kvsim"], **with_run_info({})["kvsim"]}
    atomic_write(os.path.join(directory, "vllm-bench.json"), to_json(bench))
    # summary last: its presence means the run's files are complete
    atomic_write(os.path.join(directory, "summary.json"), to_json(with_run_info(result.summary)))
