"""``bincam ARGV`` run in the test's own process, for tests that read what it printed."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout


def run_cli(argv) -> tuple[int, str]:
    """``(exit status, printed text with whitespace collapsed)`` of ``bincam *argv``."""
    from bincam.cli.app import main

    printed, saved, sys.argv = io.StringIO(), sys.argv, ["bincam", *map(str, argv)]
    try:
        with redirect_stderr(printed), redirect_stdout(printed):
            main()
        status = 0
    except SystemExit as exc:
        status = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return status, " ".join(printed.getvalue().split())
