"""``python -m fastmmgan.bench``: the training-step benchmark, run from a source checkout.

The benchmark code lives in the checkout's ``benchmarks/`` folder beside the package, not in the installed
package; this entry point finds that folder and runs ``benchmarks.train_bench``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import FastMMGANError

CHECKOUT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    if not (CHECKOUT / "benchmarks" / "train_bench.py").is_file():
        raise FastMMGANError(
            "python -m fastmmgan.bench runs the benchmarks of a source checkout (benchmarks/train_bench.py); "
            "install fastmmgan with `pip install -e .` from a clone to use it"
        )
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    from benchmarks.train_bench import main as bench_main

    return bench_main(argv)


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
