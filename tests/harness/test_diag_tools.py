"""The run 9 diagnosis scripts' arithmetic (their GPU measurements are in reports/validation/h100-run9-diag)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from kernels.harness.diag_calib import batches_to_time, summarize  # noqa: E402
from kernels.harness.diag_fit_spread import extra  # noqa: E402


def _decode_row(context: int, longest: int, seqs: int = 4) -> dict:
    return {"decode_seqs": seqs, "decode_context": context, "longest": longest}


def test_makespan_feature_is_the_larger_of_the_two_bounds():
    # 8,250 tokens over 8.25 sequences in flight: 1,000 tokens per wave, above the longest (500)
    assert extra(_decode_row(8250, 500), "makespan") == pytest.approx(1000.0)
    # one long sequence: its program (capped at the 2,048-token partition) sets the time
    assert extra(_decode_row(1000, 3000), "makespan") == 2048.0
    assert extra(_decode_row(1000, 3000), "longest") == 3000.0
    assert extra(_decode_row(1000, 3000), "none") == 0.0
    assert extra(_decode_row(0, 0, seqs=0), "makespan") == 0.0  # no decode rows: no attention


def test_every_spread_batch_has_a_uniform_twin_of_the_same_size_and_total():
    replay = [{"run": "r", "iteration": 1, "lens": [100, 300, 2000]}, {"run": "r", "iteration": 2, "lens": [5000, 7]}]
    items = batches_to_time(np.random.default_rng(0), replay, max_len=4096)
    spread = [i for i, it in enumerate(items) if it.get("kind") == "spread"]
    assert len(spread) == 4 * 3 + 2  # sizes 8, 16, 24, 32 x (two synthetic means + one long), and the replay's two
    for i in spread:
        lens, twin = items[i]["lens"], items[i + 1]
        assert twin["kind"] == "twin" and twin["name"] == items[i]["name"] + " (uniform twin)"
        assert len(set(twin["lens"])) == 1 and len(twin["lens"]) == len(lens)
        assert abs(sum(twin["lens"]) - sum(lens)) <= len(lens) / 2  # the mean, rounded to a whole token
        assert max(lens) <= 4095  # clipped below the bound
    assert items[-2]["lens"] == [4095, 7]  # 5,000 clipped to max_len - 1


def test_summary_compares_modes_and_pairs(tmp_path, capsys):
    def row(name, kind, repeat, evolve):
        return {
            "name": name,
            "kind": kind,
            "n": 2,
            "total": 10,
            "max": 5,
            "repeat": {"wall_s": repeat, "gpu_s": repeat},
            "evolve": {"wall_s": evolve, "gpu_s": evolve},
        }

    rows = [
        row("uniform 2x5", "uniform", 1.0, 1.1),
        row("synthetic a", "spread", 2.0, 2.2),
        row("synthetic a (uniform twin)", "twin", 1.6, 2.0),
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"rows": rows, "modes": ["repeat", "evolve"]}))
    summarize(str(path))
    out = capsys.readouterr().out
    assert "uniform  ( 1 batches) evolve 1.100 (1.100)" in out
    # spread / twin: 2.0 / 1.6 = 1.25 (repeat), 2.2 / 2.0 = 1.10 (evolve)
    assert "spread / uniform twin, all (1 pairs): repeat 1.250  evolve 1.100" in out
