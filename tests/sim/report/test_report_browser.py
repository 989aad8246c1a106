"""The report opened in headless Chromium: it loads with no JavaScript error and every chart is drawn.

Chromium comes from Debian's `chromium` package, which `.ci/run` installs. Outside CI, without a browser, the test
says so and skips; in CI (CI set) a missing browser fails it.
"""

from __future__ import annotations

import os

import pytest

from sim.cli.main import main
from sim.report.browser import check_page, find_chromium, screenshot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium in CI: .ci/run should have installed Debian's chromium package")
        pytest.skip("no Chromium found (apt-get install chromium, or set $CHROMIUM): browser test skipped")
    return path


def test_report_draws_every_chart_without_errors(chromium, tmp_path):
    out = str(tmp_path / "report.html")
    assert (
        main(
            [
                "report",
                os.path.join(ROOT, "traces", "sharegpt-2k.csv"),
                "--model",
                "llama-2-7b",
                "--gpu",
                "a100-40gb",
                "--first",
                "150",
                "--slo",
                "ttft_p99=500ms,tpot_p99=60ms",
                "--precision",
                "0.1",
                "--allocators",
                "paged,contiguous-max",
                "--jobs",
                "1",
                "-q",
                "-o",
                out,
            ]
        )
        == 0
    )
    check = check_page(out)
    assert check.errors == 0, check.status_text
    assert check.console_errors == []
    assert check.expected == 6
    assert check.rendered == check.expected, check.status_text
    # each figure's div holds a drawn plot
    assert check.dom.count('class="main-svg"') >= 6
    png = str(tmp_path / "report.png")
    screenshot(out, png, height=900)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_report_draws(chromium, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'traces = ["{os.path.join(ROOT, "traces", "sharegpt-2k.csv")}"]\nmodels = ["llama-2-7b"]\n'
        'gpus = ["a100-40gb"]\nallocators = ["paged", "contiguous-max"]\nrates = [2, 8]\nfirst = 60\n'
        'slo = "ttft_p99=1s"\n'
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--jobs", "1", "-q"]) == 0
    check = check_page(str(tmp_path / "out" / "report.html"))
    assert check.errors == 0 and check.console_errors == [], check.status_text
    assert check.expected == 2 and check.rendered == 2


def test_the_check_sees_errors_and_undrawn_charts(chromium, tmp_path):
    """The check is not vacuous: a script error is counted, and a figure that cannot draw is not counted as drawn."""
    import plotly.graph_objects as go

    from sim.report.html import Page

    page = Page("broken")
    page.figure("fig-ok", go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    page.add("<script>throw new Error('deliberate');</script>")
    html = page.render().replace(
        '{"id":"fig-ok"', '{"id":"fig-missing","figure":{"data":[],"layout":{}}},{"id":"fig-ok"', 1
    )
    path = tmp_path / "broken.html"
    path.write_text(html)
    check = check_page(str(path))
    assert check.errors >= 2  # the thrown error and the figure with no div
    assert check.expected == 2 and check.rendered == 1
