"""`--json` on `sim compare` and `sim report`: stdout holds one JSON document (the other lines go to stderr), the same
as the file the command writes."""

from __future__ import annotations

import json
import os

from sim.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = "arrival_s,prompt_tokens,output_tokens\n0,100,20\n0.5,200,10\n1.0,50,5\n1.5,300,40\n2.0,80,8\n"


def test_compare_json(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(TRACE)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--allocators", "paged,contiguous-max", "--out", str(out), "-q", "--json"]) == 0
    captured = capsys.readouterr()
    summaries = json.loads(captured.out)
    assert summaries == json.loads((out / "compare.json").read_text())
    assert [s["allocator"] for s in summaries] == ["paged", "contiguous-max"]
    for s in summaries:
        for key in ("requests", "throughput", "kv_memory", "latency_s", "duration_s"):
            assert key in s
        assert s["requests"]["completed"] == 5
    assert "trace:" in captured.err and "compare.json" in captured.err  # the human lines, on stderr


def test_compare_without_json_prints_the_table(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(TRACE)
    assert main(["compare", str(path), "--allocators", "paged", "--out", str(tmp_path / "c"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trace:") and "wrote" in out


def test_report_json(tmp_path, capsys):
    argv = [
        "report",
        os.path.join(ROOT, "traces", "sharegpt-2k.csv"),
        "--model",
        "llama-2-7b",
        "--gpu",
        "a100-40gb",
        "--first",
        "100",
        "--allocators",
        "paged",
        "--precision",
        "0.2",
        "--price",
        "a100-40gb=1.2",
        "-q",
        "--validation-dir",
        str(tmp_path / "v"),
        "-o",
        str(tmp_path / "r.html"),
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data == json.load(open(tmp_path / "r-data" / "report.json"))
    for key in ("trace", "model", "gpu", "gpus", "slos", "results", "recommendation", "headline", "probes"):
        assert key in data
    h = data["headline"]
    for key in (
        "replicas",
        "gpus",
        "cost_per_hour_usd",
        "headroom",
        "rejected_share",
        "cost_per_million_output_tokens_usd",
    ):
        assert key in h
    assert h["cost_per_hour_usd"] == 1.2 * h["gpus"]
    assert "recommendation:" in captured.err
