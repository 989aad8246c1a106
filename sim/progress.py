"""Progress on stderr, for every long command: one status line (searches, sweeps) and the replay progress bar drawn
on it. Shown only on a terminal, never with --quiet."""

from __future__ import annotations

import shutil
import sys
import time


class StatusLine:
    def __init__(self, enabled: bool | None = None, stream=None, interval_s: float = 0.25):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval_s = interval_s
        self.start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        line = f"{self.elapsed()} {text}"
        if self.stream.isatty():  # one terminal line: cut to its width, padded over the previous one
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            if len(line) > width:
                line = line[: width - 1] + "…"
            line = line.ljust(width)
        self.stream.write("\r" + line)
        self.stream.flush()
        self._shown = True

    def bar(self, label: str, done: int, total: int, extra: str = "", force: bool = False) -> None:
        frac = done / total if total else 1.0
        width = 16
        self.update(
            f"{label} [{'#' * int(frac * width):<{width}}] {done}/{total}{(' ' + extra) if extra else ''}", force
        )

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


class ProgressBar:
    """A replay's progress callback, (requests done, requests total), drawn as a bar on a StatusLine."""

    def __init__(self, label: str, enabled: bool | None = None, stream=None, interval_s: float = 0.2):
        self.label = label
        self.status = StatusLine(enabled, stream, interval_s)

    def __call__(self, done: int, total: int) -> None:
        self.status.bar(self.label, done, total, "requests", force=done >= total)

    def close(self) -> None:
        self.status.close()
