"""validation.json figures by hand (no torch): relative errors, KV percentage points, the batch-size series MAE on a
common time grid, targets and headline ratios."""

import numpy as np
import pytest

from kernels.harness.validate import _pair, batch_series_mae, headline, peak_blocks, targets


def _steps(times, durations, running):
    return {
        "time_s": np.array(times, float),
        "duration_s": np.array(durations, float),
        "running": np.array(running, float),
    }


def test_pair_relative_error():
    assert _pair(11, 10) == {"predicted": 11.0, "measured": 10.0, "rel_error": pytest.approx(0.1)}
    assert _pair(0, 0)["rel_error"] == 0.0
    assert _pair(None, 3)["rel_error"] is None


def test_batch_series_mae_on_a_common_grid():
    pred = _steps([0, 1, 2, 3], [1, 1, 1, 1], [2, 2, 4, 4])
    meas = _steps([0, 2], [2, 2], [2, 2])
    s = batch_series_mae(pred, meas, points=4)  # grid 0, 1, 2, 3: |2-2|, |2-2|, |4-2|, |4-2|
    assert s["mae"] == pytest.approx(1.0)
    assert s["mean_measured"] == pytest.approx(2.0)
    assert s["mae_relative_to_mean"] == pytest.approx(0.5)


def test_gaps_between_iterations_count_as_zero():
    pred = _steps([0, 3], [1, 1], [5, 5])  # idle in [1, 3)
    meas = _steps([0, 1, 2, 3], [1, 1, 1, 1], [5, 5, 5, 5])
    assert batch_series_mae(pred, meas, points=4)["mae"] == pytest.approx(2.5)


def test_peak_blocks_and_targets():
    steps = {
        "token_states_bytes": np.array([10.0, 30.0]),
        "reserved_bytes": np.array([5.0, 2.0]),
        "internal_fragmentation_bytes": np.array([1.0, 0.0]),
    }
    assert peak_blocks(steps, block_bytes=8) == 4
    metrics = {
        "batch_size_mean": _pair(10.1, 10),
        "output_tokens_per_s": _pair(100, 90),
        "ttft_p50": _pair(1, 1),
        "ttft_p99": _pair(1, 1),
        "tpot_p50": _pair(1, 1),
        "tpot_p99": _pair(1, 1),
    }
    for c, pp in zip(
        ("token_states", "reserved", "internal_fragmentation", "external_fragmentation", "free"), (0.5, -1.5, 0, 0, 1.0)
    ):
        metrics[f"kv_{c}"] = {"abs_error_pp": pp}
    t = targets(metrics)
    assert t["batch_size_mean"]["met"] and not t["output_tokens_per_s"]["met"]
    assert t["kv_token_states"]["met"] and not t["kv_reserved"]["met"] and t["kv_free"]["met"]


def test_headline_ratios_against_paged():
    def rec(name, tps, bs):
        return {
            "allocator": name,
            "metrics": {
                "output_tokens_per_s": {"predicted": tps[0], "measured": tps[1]},
                "batch_size_mean": {"predicted": bs[0], "measured": bs[1]},
            },
        }

    h = headline([rec("contiguous-max", (100, 100), (2, 2)), rec("paged", (250, 240), (5, 5))])
    r = h["ratios"]["paged/contiguous-max"]
    assert h["baseline"] == "paged"
    assert r["output_tokens_per_s"]["predicted"] == pytest.approx(2.5)
    assert r["output_tokens_per_s"]["measured"] == pytest.approx(2.4)
    assert r["output_tokens_per_s"]["rel_error"] == pytest.approx(2.5 / 2.4 - 1)
    assert r["output_tokens_per_s"]["met"] is True
