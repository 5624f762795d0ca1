"""What every command line tool shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

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
