"""What the energy score's second generator draw costs: the default compiled step with the second draw made
without autograd (``one-sided``, the default), with both draws differentiated (``both``, the earlier step),
and without the energy score (``none``).

Each measurement runs in its own process, as training does (one compiled step per process, nothing else
warm), and the three alternate round by round, so a machine whose speed drifts affects all three alike::

    python benchmarks/energy_draws.py --rounds 6 --steps 1000

prints each variant's per-round times and its median, and the median's ratio to ``both``. The first round
compiles each variant (inductor's cache keeps it for the rest); it is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

VARIANTS = ("one-sided", "both", "none")


def time_one(variant: str, steps: int) -> float:
    """Milliseconds per step of the default digits step in this process, after 50 warm-up steps."""
    import torch

    from fastmmgan.build import build_models
    from fastmmgan.config import TrainConfig
    from fastmmgan.data import load_dataset
    from fastmmgan.step import CompiledStep, Recipe
    from fastmmgan.step_inputs import draw_step_inputs

    @dataclass(frozen=True)
    class BothDraws(Recipe):
        """The default recipe with both draws differentiated, as the step did before the one-sided estimator."""

        @property
        def differentiates_both_draws(self) -> bool:
            return True

    cfg = TrainConfig(energy_weight=0.0) if variant == "none" else TrainConfig()
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    m = build_models(data, cfg)
    recipe = Recipe.from_config(cfg)
    if variant == "both":
        recipe = BothDraws(**recipe.__dict__)
    step = CompiledStep(m.G, m.D, m.ema, m.opt_g, m.opt_d, recipe, device=torch.device("cpu"))
    batches = [draw_step_inputs(data, i, cfg) for i in range(50)]
    for batch in batches:
        step(batch)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps * 1e3


def run_child(variant: str, steps: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="timed rounds (each runs every variant once)")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per measurement")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(f"{time_one(args.child, args.steps):.4f}")
        return
    for variant in VARIANTS:  # compile each once; the cache serves the timed rounds
        run_child(variant, 10)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            times[variant].append(run_child(variant, args.steps))
    both = statistics.median(times["both"])
    for variant, ts in times.items():
        med = statistics.median(ts)
        rounds = ", ".join(f"{t:.1f}" for t in ts)
        print(f"{variant:>9}: median {med:.2f} ms/step ({rounds}), {med / both:.2f}x both")


if __name__ == "__main__":
    main()
