"""The device the kernel tests run on (the interpreter switch, CI's rule on skips and the shared fixtures are in
the repository's root ``conftest.py``)."""

import pytest
import torch

CUDA = torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if CUDA else "cpu")
"""Where the Triton kernels are tested: CUDA on a GPU host, CPU tensors in the interpreter elsewhere."""

# The reason must contain the root conftest's NEEDS_CUDA, the only skip CI allows.
SMALL_MODEL = {"batch_size": 16, "z_dim": 8, "g_width": 32, "d_width": 32, "g_depth": 1, "d_depth": 1}
"""The model the step, divergence and resume tests train: one compiled step graph, which inductor's cache then
compiles once per suite (a cold compile of it takes minutes on a 2-core CPU)."""


def cli_flags(settings: dict) -> list[str]:
    """``{"batch_size": 16}`` -> ``["--batch-size", "16"]``: the same settings as ``python -m fastmmgan.train`` flags."""
    return [arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none found: run on a GPU host)")


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """The numerics policy: fp32 at 1e-5 scaled by magnitude, 16-bit at 2e-2 against the fp32 reference cast."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    if dtype == torch.float32:
        atol = 1e-5 * max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)
    else:
        torch.testing.assert_close(actual.float(), expected.to(dtype).float(), rtol=2e-2, atol=2e-2)
