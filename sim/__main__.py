import os
import signal
import sys


def _before_main(signum, frame) -> None:
    # Ctrl-C or SIGTERM while the modules load: nothing has been written yet, so leave quietly (no traceback)
    sys.exit(130 if signum == signal.SIGINT else 143)


for _sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_sig) is not signal.SIG_IGN:
        signal.signal(_sig, _before_main)

from sim.cli.main import main  # noqa: E402 (after the handlers: the imports take a while)


def run() -> None:
    """`python -m sim` and the `sim` command: main(), then an exit that no signal or stuck thread can turn into a
    kill or a hang."""
    try:
        code = main()
    finally:
        # the run is over and its output written: a signal now must not kill the interpreter during its shut-down,
        # when Python has put the default handlers back (the run would report "killed" with a finished output)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    if code in (130, 143):
        # Interrupted: every clean-up has run (temporary files, worker pools stopped). Python's own shut-down would
        # still join the process pools' manager threads, which can wait for ever on workers that were killed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
