"""`sim report` end to end on a small trace: files written, one self-contained page, figures' data beside it,
replicas from capacity, validation results picked up when they match."""

from __future__ import annotations

import csv
import json
import math
import os
import re

import pytest

from sim.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "sharegpt-2k.csv")
FIGURE_CSVS = ("capacity.csv", "memory.csv", "timeline.csv", "rates.csv", "latency.csv", "block_sizes.csv")


def run_report(tmp_path, *extra: str, name: str = "report.html") -> tuple[str, str]:
    out = str(tmp_path / name)
    argv = [
        "report",
        TRACE,
        "--model",
        "llama-2-7b",
        "--gpu",
        "a100-40gb",
        "--first",
        "150",
        "--slo",
        "ttft_p99=500ms,tpot_p99=60ms",
        "--target-rate",
        "25",
        "--precision",
        "0.1",
        "-q",
        "--validation-dir",
        str(tmp_path / "validation"),
        "-o",
        out,
        *extra,
    ]
    assert main(argv) == 0
    return out, out[: -len(".html")] + "-data"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    return run_report(tmp, "--allocators", "paged,contiguous-max", "--block-sizes", "16,32", "--jobs", "2")


def test_files_and_self_contained_page(report):
    html_path, data_dir = report
    page = open(html_path, encoding="utf-8").read()
    for name in FIGURE_CSVS + ("results.csv", "report.json"):
        assert os.path.getsize(os.path.join(data_dir, name)) > 0, name
    # plotly.js is inlined exactly once, and nothing is loaded from elsewhere
    assert page.count("* plotly.js v") == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=", page)
    # one drawing call per figure, from one JSON block
    figures = json.loads(
        re.search(r'<script type="application/json" id="report-figures">(.*?)</script>', page, re.S).group(1)
    )
    assert [f["id"] for f in figures] == [
        "fig-capacity",
        "fig-memory",
        "fig-timeline",
        "fig-rates",
        "fig-latency",
        "fig-block-size",
    ]
    for f in figures:
        assert f'<div class="figure" id="{f["id"]}"></div>' in page
    assert "No GPU validation results exist for llama-2-7b on a100-40gb" in page
    assert oct(os.stat(html_path).st_mode & 0o044) == oct(0o044)  # readable by others, like any report


def test_replicas_follow_from_capacity(report):
    _, data_dir = report
    data = json.load(open(os.path.join(data_dir, "report.json")))
    results = data["results"]
    assert {(r["allocator"], r["block_size"]) for r in results} == {
        ("paged", 16),
        ("contiguous-max", 16),
        ("paged", 32),
        ("contiguous-max", 32),
    }
    for r in results:
        assert r["capacity_rps"] > 0 and not r["unbounded"]
        assert r["replicas"] == math.ceil(25 / r["capacity_rps"])
        assert r["missed_first"]  # some SLO gave out at the lowest failing rate
        assert r["gpus"] == r["replicas"]  # tp = 1
        # the capacity is the highest passing probe, and the search's bracket is within 10%
        probes = [p for p in data["probes"] if p["config"] == f"{r['allocator']} / {r['block_size']}"]
        assert max(p["rate_rps"] for p in probes if p["passed"]) == r["capacity_rps"]
        assert min(p["rate_rps"] for p in probes if not p["passed"]) == r["bracket_hi_rps"]
        assert r["bracket_hi_rps"] <= r["capacity_rps"] * 1.1
    best = min(results, key=lambda r: (r["gpus"], -r["capacity_rps"]))
    assert data["recommendation"]["gpus"] == best["gpus"]
    assert data["recommendation"]["allocator"] == best["allocator"]
    # the memory CSV's five fractions sum to 1 per configuration
    with open(os.path.join(data_dir, "memory.csv")) as f:
        for row in csv.DictReader(f):
            total = sum(
                float(row[c])
                for c in ("token_states", "reserved", "internal_fragmentation", "external_fragmentation", "free")
            )
            assert total == pytest.approx(1.0, abs=1e-6)


def test_validation_results_are_shown_when_they_match(tmp_path):
    vdir = tmp_path / "validation"
    (vdir / "run-1").mkdir(parents=True)
    (vdir / "run-2").mkdir()
    (vdir / "run-1" / "validation.json").write_text(
        json.dumps(
            {
                "gpu": "a100-40gb",
                "model": "llama-2-7b",
                "allocator": "paged",
                "device": "NVIDIA A100-SXM4-40GB",
                "metrics": {
                    "throughput_rps": {"predicted": 5.5, "measured": 5.0},
                    "ttft_p99_s": {"predicted": 1.0, "measured": 1.25, "rel_error": -0.2},
                },
            }
        )
    )
    (vdir / "run-2" / "validation.json").write_text(
        json.dumps(
            {  # another GPU: not shown
                "gpu": "h100-80gb",
                "model": "llama-2-7b",
                "metrics": {"throughput_rps": {"predicted": 1, "measured": 1}},
            }
        )
    )
    html_path, data_dir = run_report(tmp_path, "--allocators", "paged")
    page = open(html_path, encoding="utf-8").read()
    assert "NVIDIA A100-SXM4-40GB" in page
    assert "h100" not in page.split("Predicted vs measured")[1].split("<h2>")[0]
    with open(os.path.join(data_dir, "validation.csv")) as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(rows["throughput_rps"]["rel_error"]) == pytest.approx(0.1)  # (5.5 - 5) / 5, computed when absent
    assert float(rows["ttft_p99_s"]["rel_error"]) == pytest.approx(-0.2)  # as given


def test_refuses_to_overwrite_and_bad_slo(tmp_path, capsys):
    out = tmp_path / "r.html"
    out.write_text("x")
    assert main(["report", TRACE, "-o", str(out), "-q"]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert main(["report", TRACE, "-o", str(tmp_path / "s.html"), "--slo", "ttft_p99", "-q"]) == 2
    assert "cannot read SLO" in capsys.readouterr().err
