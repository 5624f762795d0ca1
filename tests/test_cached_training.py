"""Training on a prepared (memory-mapped) dataset: lazy row views, the background prefetch drawing exactly the
batches the step would draw, exact resume, and torchrun's processes each on their own rows."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from conftest import requires_cuda
from fastmmgan import train
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.config import TrainConfig
from fastmmgan.feature_store import FeatureColumn
from fastmmgan.prefetch import BatchPrefetcher
from fastmmgan.prepare import PrepareSettings, prepare
from fastmmgan.step_inputs import draw_step_inputs
from fastmmgan.trainer import Trainer

WORDS = ["red", "green", "blue", "round", "square", "small"]
MODEL = ["--batch-size", "8", "--g-width", "16", "--d-width", "16", "--z-dim", "4", "--sample-every", "0",
         "--log-every", "2", "--no-progress", "--no-compile"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 rows of 6x6 RGB images, captions and tones of 0.05-0.2 s (so audio rows get random crops)."""
    d = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(d / f"{i}.png")
        t = np.arange(int(8000 * rng.uniform(0.05, 0.2))) / 8000
        sf.write(d / f"{i}.wav", 0.4 * np.sin(2 * np.pi * (300 + 40 * i) * t), 8000)
        rows.append({"image_file_name": f"{i}.png", "audio_file_name": f"{i}.wav",
                     "caption": " ".join(rng.choice(WORDS, 2, replace=False))})
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _config(folder, tmp_path, **kw):
    return TrainConfig(data=str(folder), steps=4, batch_size=8, g_width=16, d_width=16, z_dim=4, compile=False,
                       device="cpu", clip_seconds=0.1, cache_dir=str(tmp_path / "cache"), **kw)


def test_columns_read_rows_lazily_and_as_floats(folder, tmp_path):
    ds = prepare(str(folder), PrepareSettings(clip_seconds=0.1), root=tmp_path / "cache", progress=False).dataset
    images = ds.features[0]
    assert isinstance(images, FeatureColumn) and images.storage.dtype == torch.uint8
    whole = images[:]
    assert whole.dtype == torch.float32 and whole.shape == (40, 108)
    expected = np.asarray(Image.open(folder / "7.png"), dtype=np.float32).reshape(-1) / 255
    np.testing.assert_array_equal(whole[7].numpy(), expected)
    train_ds, test_ds = ds.split(0.25, seed=3)
    assert train_ds.features[0].storage.data_ptr() == images.storage.data_ptr()  # a view: nothing copied
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(test_ds.features[0][:], whole[perm[:10]])
    torch.testing.assert_close(test_ds.features[0][torch.tensor([True, False] * 5)], whole[perm[:10:2]])
    # Unsorted, repeated indices come back in the order asked.
    torch.testing.assert_close(images[torch.tensor([5, 1, 5, 0])], whole[[5, 1, 5, 0]])
    # A copy to a device holds the viewed rows only, in order (chunked: two rows at a time here).
    test_ds.features[0]._chunk_rows = lambda: 2
    moved = test_ds.features[0].to("cpu")
    assert moved.rows is None and len(moved.storage) == 10
    torch.testing.assert_close(moved[:], whole[perm[:10]])
    assert test_ds.features[1].to("cpu") is test_ds.features[1]  # audio stays where its STFT runs


def test_prefetched_batches_are_the_drawn_batches(folder, tmp_path):
    cfg = _config(folder, tmp_path)
    ds = prepare(str(folder), PrepareSettings(clip_seconds=0.1), root=tmp_path / "cache", progress=False).dataset
    draw = lambda step: draw_step_inputs(ds, step, cfg)  # noqa: E731
    with BatchPrefetcher(draw, stop=10) as ahead:
        got = [ahead.get(s) for s in (0, 1, 2, 5, 6)]  # a jump (a resumed or skipped step) draws afresh
    for step, batch in zip((0, 1, 2, 5, 6), got, strict=True):
        want = draw(step)
        for a, b in zip(batch.real + [batch.z, batch.given], want.real + [want.z, want.given], strict=True):
            assert torch.equal(a, b), step


def test_prefetch_keeps_the_trajectory(folder, tmp_path):
    """Four steps with the background prefetch and without: the same weights, bit for bit."""
    weights = {}
    for mode in ("yes", "no"):
        trainer = Trainer(_config(folder, tmp_path, prefetch=mode), tmp_path / mode, progress=False)
        trainer.run(progress=False)
        weights[mode] = {**trainer.G.state_dict(), **{f"D.{k}": v for k, v in trainer.D.state_dict().items()}}
    for name, tensor in weights["no"].items():
        assert torch.equal(weights["yes"][name], tensor), name


def test_resume_on_cached_data_is_exact(folder, tmp_path):
    cache = ["--data", str(folder), "--clip-seconds", "0.1", "--cache-dir", str(tmp_path / "cache")]
    assert train.main([*cache, *MODEL, "--steps", "6", "--out", str(tmp_path / "straight")]) == 0
    assert train.main([*cache, *MODEL, "--steps", "3", "--out", str(tmp_path / "resumed")]) == 0
    assert train.main([*cache, *MODEL, "--steps", "6", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 6
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(b[key][name], tensor), f"{key}.{name}"
    events = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [e["reused"] for e in events if e.get("event") == "data"] == [True, True]  # prepared by the first run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_processes_train_their_own_rows_of_cached_data(folder, tmp_path):
    args = ["--data", str(folder), "--clip-seconds", "0.1", "--cache-dir", str(tmp_path / "cache"), *MODEL,
            "--steps", "4", "--dist-timeout", "120"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastmmgan.train", *args, "--out",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "fastmmgan.train", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    first = next(line for line in lines if line.get("event") == "first_step")
    assert first["rows_per_process"] == [4, 4] and first["slices_make_the_global_batch"]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    for key in ("generator", "discriminator"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


@requires_cuda
def test_batches_drawn_on_the_device_are_the_cpu_batches(folder, tmp_path):
    """--data-on-device: features gathered on the GPU give the batches drawn on the CPU (so resume stays exact);
    the pinned prefetch path too."""
    cfg = _config(folder, tmp_path, condition_noise=0.3)
    ds = prepare(str(folder), PrepareSettings(clip_seconds=0.1), root=tmp_path / "cache", progress=False).dataset
    on_gpu = ds.features_to("cuda")
    for step in (0, 3):
        want, got = draw_step_inputs(ds, step, cfg), draw_step_inputs(on_gpu, step, cfg)
        assert [x.is_cuda for x in got.real] == [True, False, True]  # audio stays on the host (its STFT runs there)
        for a, b in zip(got.real + got.mismatched + got.conditions, want.real + want.mismatched + want.conditions,
                        strict=True):
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-6)
    with BatchPrefetcher(lambda s: draw_step_inputs(ds, s, cfg), stop=4, pin=True) as ahead:
        pinned = [ahead.get(s) for s in range(3)]
    assert all(x.is_pinned() for x in pinned[2].real)
    assert torch.equal(pinned[2].real[0], draw_step_inputs(ds, 2, cfg).real[0])
