"""The fused ops, fast path vs eager reference, forward and forward+backward (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_ops.py --benchmark-enable --benchmark-only``. The plain ``pytest``
runs only its numerics checks (timing off).

- CUDA: "fast" is the Triton op (fastmmgan.kernels), against the eager torch reference.
- CPU: "fast" is ``torch.compile(reference)`` (inductor's C++), against the eager reference; a
  Triton op never runs on CPU here.

Before timing, each fast/reference pair is checked once (output and every gradient, fp32 policy
tolerance), which also warms the fast path up (compiles, autotunes), so compile time is excluded.
Groups hold the fast and the reference timing of one op, mode and shape side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fastmmgan.ops import fused_dense_reference, shared_projection_reference

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SLOPE = 0.2

# (B, K, N) for fused_dense; (B, (K_m, ...), N) for shared_projection.
if CUDA:
    DENSE_SHAPES = [(b, w, w) for b in (64, 1024, 4096) for w in (128, 512, 1024)]
    WIDTHS = [((128, 256), 256), ((512, 256, 128), 512), ((1024, 1024), 1024)]
    PROJECTION_SHAPES = [(b, ks, n) for b in (64, 1024, 4096) for ks, n in WIDTHS]
else:
    DENSE_SHAPES = [(64, 128, 256), (1024, 512, 512), (4096, 1024, 256)]
    PROJECTION_SHAPES = [(64, (256, 128), 256), (1024, (512, 256, 128), 512), (4096, (256, 128), 256)]

Apply = Callable[[Callable, list[torch.Tensor]], torch.Tensor]
_CHECKED: set[str] = set()


def fast_impl(reference: Callable, kernel_name: str) -> Callable:
    """The Triton entry point on CUDA; the inductor-compiled reference on CPU, on a fresh dynamo cache.

    The reset keeps shapes from piling recompiles onto one code object (automatic dynamic shapes,
    then the recompile limit's silent fall back to eager).
    """
    if CUDA:
        return getattr(pytest.importorskip("fastmmgan.kernels"), kernel_name)
    torch._dynamo.reset()
    return torch.compile(reference)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 numerics policy: rtol 1e-5, atol 1e-5 scaled by the reference's magnitude."""
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)


def forward(apply: Apply, fn: Callable, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [apply(fn, inputs)]


def forward_backward(apply: Apply, fn: Callable, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    y = apply(fn, inputs)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def run_pair(benchmark, impl: str, mode: str, group: str, make_fast: Callable[[], Callable], reference: Callable,
             apply: Apply, inputs: list[torch.Tensor]) -> None:
    """Check fast against reference once per group, then time ``impl`` (synchronising on CUDA)."""
    step = forward if mode == "fwd" else forward_backward
    inputs = [t.requires_grad_(mode == "fwd+bwd") for t in inputs]
    y_shape = (inputs[0].shape[0], inputs[-1].shape[0])
    dy = torch.randn(y_shape, device=DEVICE)
    fast = make_fast() if impl == "fast" or group not in _CHECKED else None
    if group not in _CHECKED:
        got, want = step(apply, fast, inputs, dy), step(apply, reference, inputs, dy)
        for g, w in zip(got, want, strict=True):
            assert_matches(g, w)
        _CHECKED.add(group)
    chosen = fast if impl == "fast" else reference

    def call() -> None:
        step(apply, chosen, inputs, dy)
        if CUDA:
            torch.cuda.synchronize()

    benchmark.group = group
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if CUDA else "cpu"
    benchmark.pedantic(call, rounds={64: 50, 1024: 15}.get(y_shape[0], 6), iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "B{}-K{}-N{}".format(*s))
def test_fused_dense(benchmark, impl: str, mode: str, shape: tuple[int, int, int]) -> None:
    batch, k, n = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [
        torch.randn(batch, k, device=DEVICE, generator=g),
        torch.randn(n, k, device=DEVICE, generator=g) / k**0.5,
        torch.randn(n, device=DEVICE, generator=g),
    ]

    def apply(fn: Callable, t: list[torch.Tensor]) -> torch.Tensor:
        return fn(t[0], t[1], t[2], SLOPE)

    def make_fast() -> Callable:
        return fast_impl(fused_dense_reference, "fused_dense_triton")

    group = f"fused_dense {mode} B={batch} K={k} N={n}"
    run_pair(benchmark, impl, mode, group, make_fast, fused_dense_reference, apply, inputs)


def projection_id(shape: tuple[int, tuple[int, ...], int]) -> str:
    return f"B{shape[0]}-K{'+'.join(map(str, shape[1]))}-N{shape[2]}"


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", PROJECTION_SHAPES, ids=projection_id)
def test_shared_projection(benchmark, impl: str, mode: str, shape: tuple[int, tuple[int, ...], int]) -> None:
    batch, ks, n = shape
    num_mod = len(ks)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    xs = [torch.randn(batch, k, device=DEVICE, generator=g) for k in ks]
    ws = [torch.randn(n, k, device=DEVICE, generator=g) / k**0.5 for k in ks]
    bias = torch.randn(n, device=DEVICE, generator=g)
    mask = torch.rand(batch, num_mod, device=DEVICE, generator=g) > 0.3

    def apply(fn: Callable, t: list[torch.Tensor]) -> torch.Tensor:
        return fn(t[:num_mod], t[num_mod : 2 * num_mod], t[-1], mask, SLOPE)

    def make_fast() -> Callable:
        return fast_impl(shared_projection_reference, "shared_projection_triton")

    group = f"shared_projection {mode} {projection_id(shape)}"
    run_pair(benchmark, impl, mode, group, make_fast, shared_projection_reference, apply, [*xs, *ws, bias])
