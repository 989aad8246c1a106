"""Rejection reasons that name the real cause (regressions of the robustness issue)."""

import csv

from sim.cli.main import main


def test_more_parallel_samples_than_max_num_seqs_is_rejected_for_that(tmp_path):
    """4 parallel samples with --max-num-seqs 1: the request could never run, because one iteration holds at most one
    sequence, not because the KV cache is too small (it would fit: 4 x 20 tokens on a 40 GB A100)."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,n\n0,16,4,4\n0,16,4,1\n")
    out = tmp_path / "out"
    assert main(["replay", str(trace), "--max-num-seqs", "1", "--gpu", "a100-40gb", "-q", "--out", str(out)]) == 0
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["rejection"] == (
        "runs as 4 sequences (parallel samples or beams), more than --max-num-seqs 1 in one iteration"
    )
    assert rows[1]["rejection"] == "" and rows[1]["finish_s"] != ""
