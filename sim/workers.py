"""Signals and worker processes: SIGTERM handled like Ctrl-C, and process pools whose workers never outlive the run.

- `handle_signals()` (used by `sim`'s main) turns SIGTERM into `Terminated`, a KeyboardInterrupt, so that every
  clean-up path of Ctrl-C (temporary files removed, pools shut down) runs for it too; `sim` then exits 143. Each
  signal raises once: a second one while cleaning up is ignored, so the clean-up finishes.
- `worker_pool()` is a ProcessPoolExecutor whose workers ignore SIGINT (the parent handles Ctrl-C; a worker would
  print its own traceback) and die with the parent: PR_SET_PDEATHSIG on Linux, and a thread that polls the parent's
  pid as a fallback. `stop_pool()` cancels what has not started and terminates the workers at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import InvalidStateError, ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


_raised: set[int] = set()


def _on_signal(signum, frame) -> None:
    if signum in _raised:  # already unwinding: let the clean-up finish
        return
    _raised.add(signum)
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


@contextlib.contextmanager
def handle_signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt / Terminated once; the previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _raised.clear()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:  # e.g. started with nohup or in the background by a shell: keep ignoring
            continue
        previous[sig] = current
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back (they are delivered on exit): for steps that must not be cut in two."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- worker processes ------------------------------------------------------------------------------------------
def pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog below does it
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_setup(parent: int, initializer, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's handler
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked by _Pool.submit's fork
    _die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


class _Pool(ProcessPoolExecutor):
    def submit(self, *args, **kwargs):
        # submit() forks the workers: a Ctrl-C landing in a child before it ignores SIGINT would run the parent's
        # handler there (a stray traceback); held back, it is dropped once the child ignores it
        with signals_deferred():
            return super().submit(*args, **kwargs)


def worker_pool(max_workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    return _Pool(
        max_workers=max_workers,
        mp_context=pool_context(),
        initializer=_worker_setup,
        initargs=(os.getpid(), initializer, initargs),
    )


def _ignore_cancelled_in_pool_threads(args) -> None:
    """threading.excepthook while a pool is stopped: Python 3.11's pool manager thread, finding its workers
    terminated, sets an exception on every pending future, cancelled ones included, and that raises
    InvalidStateError in the thread (printed as a traceback). Nothing is lost: the futures were cancelled on purpose."""
    if isinstance(args.exc_value, InvalidStateError):
        return
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook


def stop_pool(pool: ProcessPoolExecutor, futures=()) -> None:
    """Cancel `futures` not yet started, terminate the workers and reap them (on an interrupt or error)."""
    threading.excepthook = _ignore_cancelled_in_pool_threads
    for fut in futures:
        fut.cancel()
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 5
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1)
