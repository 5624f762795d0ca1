"""What the tests and the benchmarks' numerics gates share: Triton's interpreter on hosts without a GPU, CI's
rule on skips, and the fixtures both use.

Without an NVIDIA GPU the Triton kernels run in Triton's CPU interpreter; the switch must precede any triton
import, so it is made here, before any test module imports anything. On a GPU host it stays off.
"""

import os

import pytest

GPU_HOST = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
if not GPU_HOST:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Prepared datasets go to a cache of this test session, never to the user's ~/.cache.
if "FASTMMGAN_CACHE" not in os.environ:
    import tempfile

    os.environ["FASTMMGAN_CACHE"] = tempfile.mkdtemp(prefix="fastmmgan-test-cache-")

NEEDS_CUDA = "needs a CUDA GPU"
"""The reason every GPU-only test skips with; on CI (no GPU) these are the only skips allowed."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI (``CI`` set), a skip for any reason but a missing GPU fails the test: a missing dependency
    or a silently skipped check must not pass as green."""
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if NEEDS_CUDA not in reason:
        report.outcome = "failed"
        report.longrepr = f"unexpected skip on CI (only '{NEEDS_CUDA}' skips are allowed): {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Count and name the GPU-only skips, so a run without a GPU says exactly what it did not check."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NEEDS_CUDA in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped because they {NEEDS_CUDA}:")
        for report in skipped:
            terminalreporter.write_line(f"  {report.nodeid}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Sampling runs many small calls; on a busy CPU a second thread makes each of them wait for the other."""
    import torch

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


COLOUR_SHAPE = (4, 6)
"""The RGB image size of ``tiny_colour_run``: not square, so a swapped H and W shows."""


@pytest.fixture(scope="session")
def tiny_colour_run(tmp_path_factory):
    """A run directory holding the checkpoint of a tiny, untrained model with an RGB image (``photo``, [4, 6, 3])
    and a caption (``caption``); no dataset has RGB images, so the checkpoint is written directly."""
    import torch

    from fastmmgan import __version__
    from fastmmgan.checkpoint import save_checkpoint
    from fastmmgan.config import TrainConfig
    from fastmmgan.modalities import ModalitySpec
    from fastmmgan.models import Generator

    cfg = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu")
    specs = [ModalitySpec("photo", "image", image_shape=COLOUR_SHAPE, channels=3),
             ModalitySpec("caption", "text", vocab=("red", "blue", "left", "right"))]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ema = Generator.from_config(specs, cfg)
    out = tmp_path_factory.mktemp("tiny_colour_run")
    save_checkpoint(out, 0, {"format": "fastmmgan-checkpoint", "version": __version__, "step": 0,
                             "config": cfg.to_dict(), "specs": [s.to_dict() for s in specs], "ema": ema.state_dict()})
    return out
