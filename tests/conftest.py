"""Without an NVIDIA GPU, run Triton kernels in its CPU interpreter; the switch must precede any triton import."""

import os

if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
