"""The device the kernel tests run on (the interpreter switch, CI's rule on skips and the shared fixtures are in
the repository's root ``conftest.py``)."""

import pytest
import torch

CUDA = torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if CUDA else "cpu")
"""Where the Triton kernels are tested: CUDA on a GPU host, CPU tensors in the interpreter elsewhere."""

# The reason must contain the root conftest's NEEDS_CUDA, the only skip CI allows.
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none found: run on a GPU host)")
