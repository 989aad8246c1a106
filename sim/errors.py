"""Errors a user can cause and fix. The CLI prints them without a traceback and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or options: the message says what and where."""


class TraceError(UserError):
    """A trace that cannot be used, located by file and line (line 0 means the whole file)."""

    def __init__(self, path: str, line: int, reason: str):
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line > 0 else path
        super().__init__(f"{where}: {reason}")
