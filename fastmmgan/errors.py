"""The one exception type users see for bad input: a clear one-line message, exit code 2 from the CLIs."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty): what a one-line
    error quotes from a library's multi-line message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class FastMMGANError(ValueError):
    """Bad input (data, flags, conditions, checkpoints): the message names the problem."""

    exit_code = 2


class TrainingDiverged(FastMMGANError):
    """Training stopped after too many non-finite steps in a row; the last good checkpoint is intact."""

    exit_code = 3


class PeerLost(FastMMGANError):
    """Under torchrun, a collective did not complete in time: another process hung or died."""

    exit_code = 4
