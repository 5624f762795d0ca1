"""``python -m fastmmgan.serve gen.onnx``: the HTTP server of :mod:`fastmmgan.export.server`."""

from __future__ import annotations

from .cli import run_cli
from .export.server import main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
