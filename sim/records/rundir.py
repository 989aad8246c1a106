"""A run's output directory: owned by one run at a time, checked for writability before the work, never left
looking complete when it is not.

- `open_run_dir()` creates the directory (the default `runs/<stem>-<time>` name exclusively, with a suffix when taken)
  and locks it: `fcntl.flock` on `.lock` inside, held until the run ends. A second run into the same directory is
  refused with "another run is writing into DIR". With --force into an existing directory, the old `summary.json` and
  `compare.json` (and those of its subdirectories) are removed before anything else is written, so the directory
  reads as incomplete until the new run writes its own, last. Stray `.tmp-*` files of a killed run are removed.
- `check_writable()` writes and removes a probe file, so an unwritable or full location is found before the work.
- `rescue_dir()` is where results go when the output location fails after the work (under the system temp dir).
- `run_info()` is what every summary and report records about the run: kvsim version, command line, UTC time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime

from sim.errors import UserError

LOCK_NAME = ".lock"
COMPLETION_FILES = ("summary.json", "compare.json")
PROBE_BYTES = 64 * 1024

_command: list[str] | None = None
_created: str | None = None


def set_command(argv: list[str]) -> None:
    """The command line of this run (main() calls it); fixes the run's UTC time too."""
    global _command, _created
    _command = list(argv)
    _created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kvsim_version() -> str:
    """sim.__version__ (the installed package's version)."""
    import sim

    found = getattr(sim, "__version__", None)
    if found:
        return str(found)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvsim")
    except PackageNotFoundError:
        return "0.1.0"


def run_info() -> dict:
    """{"version", "command", "created_utc"}: what produced a file."""
    argv = _command if _command is not None else sys.argv[1:]
    created = _created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"version": kvsim_version(), "command": "sim " + shlex.join(argv), "created_utc": created}


def describe_os_error(exc: OSError, path: str | None = None) -> str:
    where = exc.filename or path
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full)"
    return f"cannot write {where}: {reason}" if where else f"cannot write: {reason}"


def check_writable(directory: str) -> None:
    """Create the directory if needed and write a probe file into it; a UserError naming the path if that fails."""
    from sim.workers import signals_deferred

    try:
        os.makedirs(directory, exist_ok=True)
        with signals_deferred():  # never leave the probe behind
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".tmp-probe-")
            try:
                os.write(fd, b"\0" * PROBE_BYTES)
            finally:
                os.close(fd)
                os.unlink(probe)
    except OSError as exc:
        raise UserError(describe_os_error(exc, directory)) from None


def lock_dir(directory: str) -> int:
    """Lock `directory` for this process (flock on .lock inside); returns the lock's descriptor."""
    path = os.path.join(directory, LOCK_NAME)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(describe_os_error(exc, directory)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                message = f"another run{holder} is writing into {directory}; wait for it or use another --out"
                raise UserError(message) from None
            raise UserError(describe_os_error(exc, path)) from None
        try:  # the run before us may have removed the file after we opened it: lock the one that is there
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def unlock_dir(directory: str, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(directory, LOCK_NAME))
    os.close(fd)


def _remove_stale(directory: str) -> None:
    """Invalidate an earlier run's results: its completion files, and temporary files a killed run left."""
    subdirs = [directory]
    with contextlib.suppress(OSError):
        subdirs += [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    for d in subdirs:
        with contextlib.suppress(OSError):
            for e in os.scandir(d):
                if e.name in COMPLETION_FILES or (e.name.startswith(".tmp-") and e.is_file(follow_symlinks=False)):
                    try:
                        os.unlink(e.path)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise UserError(describe_os_error(exc, e.path)) from None


class RunDir:
    """An output directory this process owns until close()."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            unlock_dir(self.path, self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_new(root: str, stem: str) -> str:
    base = os.path.join(root, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise UserError(describe_os_error(exc, root)) from None
    out, n = base, 1
    while True:
        try:
            os.mkdir(out)  # exclusive: two runs started in the same second get different names
            return out
        except FileExistsError:
            n += 1
            out = f"{base}-{n}"
        except OSError as exc:
            raise UserError(describe_os_error(exc, out)) from None


def open_run_dir(out: str | None, stem: str, force: bool, root: str = "runs", resume: bool = False) -> RunDir:
    """The directory to write into, created if needed, locked and checked for writability.

    `out` None: a new runs/<stem>-<time> directory. An existing non-empty `out` is refused unless `force` (then its
    old results are invalidated) or `resume` (a sweep: its files are kept).
    """
    if out is None:
        out = _make_new(root, stem)
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"--out {out} exists and is not a directory")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise UserError(describe_os_error(exc, out)) from None
    fd = lock_dir(out)
    run = RunDir(out, fd)
    try:
        if not resume:
            existing = [e for e in os.listdir(out) if e != LOCK_NAME]
            if existing and not force:
                raise UserError(f"--out {out} already exists and is not empty; use --force to overwrite its files")
            if existing:
                _remove_stale(out)
        check_writable(out)
    except BaseException:
        run.close()
        raise
    return run


def rescue_dir(stem: str) -> str:
    """A new directory under the system temp dir for results that could not be written where asked."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)[:60]
    return tempfile.mkdtemp(prefix=f"kvsim-{safe}-", dir=tempfile.gettempdir())
