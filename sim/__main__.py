import signal
import sys


def _before_main(signum, frame) -> None:
    # Ctrl-C or SIGTERM while the modules load: nothing has been written yet, so leave quietly (no traceback)
    sys.exit(130 if signum == signal.SIGINT else 143)


for _sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_sig) is not signal.SIG_IGN:
        signal.signal(_sig, _before_main)

from sim.cli.main import main  # noqa: E402 (after the handlers: the imports take a while)

if __name__ == "__main__":
    sys.exit(main())
