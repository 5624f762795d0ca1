"""The device the kernel tests run on (the interpreter switch, CI's rule on skips and the shared fixtures are in
the repository's root ``conftest.py``)."""

import pytest
import torch

CUDA = torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if CUDA else "cpu")
"""Where the Triton kernels are tested: CUDA on a GPU host, CPU tensors in the interpreter elsewhere."""

# The reason must contain the root conftest's NEEDS_CUDA, the only skip CI allows.
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none found: run on a GPU host)")


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """The numerics policy: fp32 at 1e-5 scaled by magnitude, 16-bit at 2e-2 against the fp32 reference cast."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    if dtype == torch.float32:
        atol = 1e-5 * max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)
    else:
        torch.testing.assert_close(actual.float(), expected.to(dtype).float(), rtol=2e-2, atol=2e-2)
