"""Headless Chromium for reports: check that a page draws every chart without JavaScript errors, and take a
screenshot. Needs a `chromium` (or `chromium-browser`, `google-chrome`) on PATH, or $CHROMIUM naming one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    candidates = [os.environ.get("CHROMIUM")] + ["chromium", "chromium-browser", "google-chrome", "chrome"]
    for c in candidates:
        if c:
            path = shutil.which(c)
            if path:
                return path
    return None


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium package, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="kvsim-chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout_s
        )


@dataclass
class PageCheck:
    expected: int  # figures on the page
    rendered: int  # figures whose SVG was drawn
    errors: int  # JavaScript errors the page recorded
    status_text: str
    console_errors: list[str]  # 'Uncaught ...' lines Chromium logged
    dom: str


def check_page(html_path: str, timeout_s: float = 60.0, budget_ms: int = 20000) -> PageCheck:
    """Load the page, let its scripts run (virtual time), and read back #report-status (see sim.report.html)."""
    url = "file://" + os.path.abspath(html_path)
    proc = _run(
        ["--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout_s
    )
    dom = proc.stdout
    m = re.search(r'<span id="report-status"([^>]*)>(.*?)</span>', dom, re.S)
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1))) if m else {}
    console = [line for line in proc.stderr.splitlines() if "Uncaught" in line]
    return PageCheck(
        int(attrs.get("expected", -1)),
        int(attrs.get("rendered", 0)),
        int(attrs.get("errors", -1)),
        m.group(2) if m else "",
        console,
        dom,
    )


def screenshot(
    html_path: str,
    png_path: str,
    width: int = 1280,
    height: int = 4200,
    timeout_s: float = 90.0,
    budget_ms: int = 20000,
) -> None:
    """A PNG of the page's first `height` pixels at `width` pixels wide."""
    url = "file://" + os.path.abspath(html_path)
    out = os.path.abspath(png_path)
    proc = _run(
        [f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url], timeout_s
    )
    if proc.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"chromium could not take the screenshot: {proc.stderr.strip()[-500:]}")
