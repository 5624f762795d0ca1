"""What every command line tool shares: bad input is one line on stderr and exit code 2, and the log's
verbosity (``-v`` / ``-q``), set once per command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import FastMMGANError


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a :class:`FastMMGANError` (or a refused file) becomes ``error: ...`` and exit 2
    (3 when training diverged, 4 when another torchrun process stopped answering)."""
    try:
        code = main()
    except FastMMGANError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a handler holding the stream it was built with keeps
    writing to a stream that was since replaced, as in tests and notebooks)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``-v`` (info lines: what ran where, compile times), ``-vv`` (debug too), ``-q`` (errors only); by default
    the log shows warnings, so a failing command's stderr is its one error line."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log lines: -v info, -vv debug")
    group.add_argument("-q", "--quiet", action="store_true", help="log errors only")


def configure_logging(args: argparse.Namespace) -> None:
    """fastmmgan's log lines on stderr at the level ``-v``/``-q`` chose (warnings by default). Other libraries'
    loggers are left as they are; a command's own output stays on stdout (``print``)."""
    verbose = getattr(args, "verbose", 0)
    level = logging.ERROR if getattr(args, "quiet", False) else (logging.WARNING, logging.INFO)[verbose] if verbose < 2 \
        else logging.DEBUG
    logger = logging.getLogger("fastmmgan")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
