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
    """`python -m sim` and the `sim` command: main(), then an exit that no signal can turn into a kill."""
    try:
        code = main()
    finally:
        # the run is over and its output written: a signal now must not kill the interpreter during its shut-down,
        # when Python has put the default handlers back (the run would report "killed" with a finished output)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
