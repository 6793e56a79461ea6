"""`python -m batchlab` and the `batchlab` command.

Ctrl-C outside a sweep's runs ends the command at once with one line and exit code 130: no
traceback, and no interpreter teardown half-way through importing torch (which once dumped
core). A sweep installs its own handler while it runs, so that it can store the running run as
KILLED first.
"""

import os
import signal
import sys


def interrupted(signum: int, frame: object) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def main() -> None:
    signal.signal(signal.SIGINT, interrupted)
    from .cli.app import app

    app(prog_name="batchlab")


if __name__ == "__main__":
    main()
