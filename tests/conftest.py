"""Without an NVIDIA GPU, run Triton kernels in its CPU interpreter; the switch must precede any triton import."""

import os

if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Audio decoding is hundreds of small torch calls; on a busy shared CPU a second thread makes each wait."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory holding the checkpoint of a tiny, untrained digits model (eager, CPU)."""
    from fastmmgan.config import TrainConfig
    from fastmmgan.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu")
    Trainer(cfg, out).save()
    return out
