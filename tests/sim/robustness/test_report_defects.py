"""Regression tests for the capacity report's defects (issue item 11). Each fails on the pre-restructuring code.

- SLO labels on log axes: plotly.js reads an annotation's y on a log axis as log10 of the value, so the label must
  be placed at log10(threshold) there (the line itself, a shape, takes the value).
- The recommendation table overflowed a 1280 px window: every table sits in a horizontally scrolling wrapper.
- TPOT was shown in seconds: it is shown in milliseconds wherever it is labelled.
- `sim report` exited 0 when nothing met the SLOs: it exits 1, and still writes the report.
- The headline did not say how many requests were rejected.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sim.report import charts, html
from sim.report.slo import parse_slos

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "sharegpt-2k.csv")


def _probe(rate: float, ttft: float, tpot: float, passed: bool):
    summary = {
        "throughput": {"requests_per_s": rate},
        "requests": {"preemptions": 0, "rejected": 0, "completed": 10, "total": 10},
        "batch_size": {"mean": 1.0},
    }
    values = {"ttft_p99": ttft, "tpot_p99": tpot}
    return SimpleNamespace(rate=rate, factor=rate, passed=passed, goodput_rps=rate, slo_values=values, summary=summary)


def _results():
    # TTFT spans decades (log axis), TPOT does not (linear axis)
    probes = [_probe(1.0, 0.05, 0.030, True), _probe(2.0, 1.5, 0.035, True), _probe(4.0, 900.0, 0.04, False)]
    return [SimpleNamespace(label="paged / 16", probes=probes, capacity_rps=2.0)]


def _slo_labels(fig) -> dict[str, object]:
    return {a.text: a for a in fig.layout.annotations if a.text and a.text.startswith("SLO")}


def test_slo_label_on_a_log_axis_sits_at_log10_of_the_threshold():
    slos = parse_slos("ttft_p99=2s,tpot_p99=100ms")
    fig, _ = charts.rate_chart(_results(), slos)
    labels = _slo_labels(fig)
    ttft = next(a for t, a in labels.items() if "2 s" in t)
    axis = fig.layout[ttft.yref.replace("y", "yaxis")]
    assert axis.type == "log"
    assert ttft.y == pytest.approx(math.log10(2.0))
    tpot = next(a for t, a in labels.items() if "100 ms" in t)
    assert fig.layout[tpot.yref.replace("y", "yaxis")].type != "log"
    assert tpot.y == pytest.approx(100.0)  # TPOT panel in ms, linear axis: the value itself
    shapes = sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1)
    assert shapes == pytest.approx([2.0, 100.0])  # the lines (shapes) take the values in the axis's units


def test_tpot_is_labelled_in_milliseconds():
    slos = parse_slos("ttft_p99=2s,tpot_p99=100ms")
    fig, _ = charts.rate_chart(_results(), slos)
    titles = [a.text for a in fig.layout.annotations if a.text and not a.text.startswith("SLO")]
    assert "tpot_p99 (ms)" in titles and "ttft_p99 (s)" in titles
    tpot_trace = [t for t in fig.data if t.yaxis == "y3"]
    assert tpot_trace and list(tpot_trace[0].y) == pytest.approx([30.0, 35.0, 40.0])


def test_tables_scroll_inside_the_page_instead_of_overflowing_it():
    out = html.table(["a"] * 20, [["x" * 12] * 20])
    assert out.startswith('<div class="table-wrap"><table>') and out.endswith("</table></div>")
    rule = re.search(r"\.table-wrap\s*\{([^}]*)\}", html.CSS)
    assert rule, "no CSS rule for .table-wrap"
    assert "overflow-x: auto" in rule.group(1) and "max-width: 100%" in rule.group(1)


def _report(tmp_path, slo: str) -> subprocess.CompletedProcess:
    out = tmp_path / "r.html"
    argv = [sys.executable, "-m", "sim", "report", TRACE, "--model", "llama-2-7b", "--gpu", "a100-40gb"]
    argv += ["--first", "120", "--max-model-len", "600", "--slo", slo, "--precision", "0.5", "-q", "-o", str(out)]
    argv += ["--validation-dir", str(tmp_path / "none"), "--jobs", "1"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_report_exits_1_when_nothing_meets_the_slos_and_still_writes_it(tmp_path):
    proc = _report(tmp_path, "ttft_p99=1ms")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    page = (tmp_path / "r.html").read_text()
    answer = re.search(r'<div class="answer">(.*?)</div>', page, re.S).group(1)
    assert "No configuration meets" in answer
    assert re.search(r"[0-9,]+ of 120 requests .*were rejected", answer), answer


def test_headline_says_how_many_requests_were_rejected(tmp_path):
    proc = _report(tmp_path, "ttft_p99=600s,tpot_p99=10s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "r.html").read_text()
    answer = re.search(r'<div class="answer">(.*?)</div>', page, re.S).group(1)
    m = re.search(r"([0-9,]+) of 120 requests \(([0-9.]+)%\) were rejected", answer)
    assert m, answer
    assert int(m.group(1).replace(",", "")) > 0  # prompts + outputs above 600 tokens
    assert "tpot_p99 (ms)" in page  # the recommendation table's TPOT column
