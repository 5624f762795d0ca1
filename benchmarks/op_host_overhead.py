"""Host (CPU) time per eager call of the fused ops, apart from the GPU work, against F.linear + leaky-ReLU.

Run: ``TRITON_INTERPRET=1 python benchmarks/op_host_overhead.py`` (any machine; no GPU needed).

An eager call of ``fused_dense`` costs Python and dispatcher time before its kernel reaches the GPU:
argument checks, autocast casts, the custom op's autograd wrapper, the launch code, Triton's autotuner
lookup and launcher. In eager mode at small batch that host time, not the GPU, sets the pace (CUDA
graphs remove it). This measures everything but the kernel itself: the launches are replaced by a no-op
that records nothing, on tiny CPU tensors, so the numbers are host time. Triton's own launcher cost (on a
GPU, roughly 10-30 us per launch depending on the version) comes on top and is not measured here.
Rows: forward only, and forward + backward (``autograd.grad``) which adds the backward op's dispatch and
two more launch calls. Medians over interleaved rounds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastmmgan.kernels import fused_dense as fd  # noqa: E402
from fastmmgan.kernels import fused_dense_triton  # noqa: E402


class _NoLaunch:
    """Stands in for an autotuned kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(fn: Callable[[], object], calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)

    def ref_fwd():
        with torch.no_grad():
            return F.leaky_relu(F.linear(x, w, b), 0.2)

    def fused_fwd():
        with torch.no_grad():
            return fused_dense_triton(x, w, b, 0.2)

    def ref_fwd_bwd():
        y = F.leaky_relu(F.linear(x, w, b), 0.2)
        return torch.autograd.grad(y.sum(), [x, w, b])

    def fused_fwd_bwd():
        y = fused_dense_triton(x, w, b, 0.2)
        return torch.autograd.grad(y.sum(), [x, w, b])

    saved = {name: getattr(fd, name) for name in ("_projection_fwd_kernel", "_dgrad_kernel", "_wgrad_kernel")}
    for name in saved:
        setattr(fd, name, _NoLaunch())
    try:
        rows = {"forward": (ref_fwd, fused_fwd), "forward + backward": (ref_fwd_bwd, fused_fwd_bwd)}
        print("| call | F.linear + leaky_relu us | fused_dense (launches stubbed) us | difference us |")
        print("|---|---:|---:|---:|")
        for label, (ref, fused) in rows.items():
            for fn in (ref, fused):
                per_call_us(fn, 200)  # warm-up
            ref_us, fused_us = [], []
            for _ in range(7):
                ref_us.append(per_call_us(ref))
                fused_us.append(per_call_us(fused))
            r, f = statistics.median(ref_us), statistics.median(fused_us)
            print(f"| {label} | {r:.1f} | {f:.1f} | {f - r:+.1f} |")
    finally:
        for name, kernel in saved.items():
            setattr(fd, name, kernel)


if __name__ == "__main__":
    main()
