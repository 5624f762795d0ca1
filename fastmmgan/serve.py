"""``python -m fastmmgan.serve gen.onnx``: the HTTP server of :mod:`fastmmgan.export.server`.

The server's stack (FastAPI, uvicorn, pydantic) is the optional ``serve`` extra; without it this command
says how to install it instead of failing on an import.
"""

from __future__ import annotations

import importlib.util

from .cli import run_cli
from .errors import FastMMGANError

SERVER_PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic")


def main(argv: list[str] | None = None) -> int:
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise FastMMGANError(
            f"the HTTP server needs {', '.join(missing)}: pip install 'fastmmgan[serve]'"
        )
    from .export.server import main as serve_main

    return serve_main(argv)


if __name__ == "__main__":
    run_cli(main)
