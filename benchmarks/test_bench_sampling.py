"""Sampling end to end, PyTorch (``load_generator``) vs ONNX Runtime (``OnnxGenerator``), and audio decoding
(pytest-benchmark).

Run: ``pytest benchmarks/test_bench_sampling.py --benchmark-enable``. Under the plain ``pytest`` run (timing off)
only the numerics gates run: both engines' decoded outputs agree, and decoded audio matches its magnitudes.

Everything runs on one CPU thread (``torch.set_num_threads(1)``, ORT ``intra_op_threads=1``), a serving
worker's share. The generator is the default configuration, built by a ``Trainer`` at step 0 and exported.
Timed calls are the public API from raw conditions to decoded outputs:
- ``sample(n, {"text": ["seven"] * n}, seed=0, modalities=["image"])`` at n = 1 and 32 (image only: no audio
  decode), and the same for every modality;
- ``ModalitySpec.decode`` of digits audio features, 64 clips at once and one clip.
The image-only ratios against the targets (>= 3x at batch 1, >= 1.5x at batch 32) come from interleaved
rounds (one PyTorch call, then one ONNX Runtime call, repeated), so drift in the machine's speed hits both
alike; the summary prints them with each engine's median, the separately timed cases and the audio decode
time per clip (target <= 1 ms batched).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import fastmmgan
from benchmarks.summary import print_summary
from fastmmgan.config import TrainConfig
from fastmmgan.data import load_digits_dataset
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.griffin_lim import spectral_convergence, stft_pair
from fastmmgan.modalities import audio_magnitude
from fastmmgan.trainer import Trainer

BATCHES = (1, 32)
TARGETS = {1: 3.0, 32: 1.5}
AUDIO_TARGET_MS = 1.0
MEDIANS: dict[tuple, float] = {}


@pytest.fixture(scope="module")
def engines(tmp_path_factory, request):
    """(PyTorch sampler, ONNX Runtime sampler) of the default config, one thread each."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench_sampling")
    Trainer(TrainConfig(compile=False, device="cpu"), out / "run").save()
    path = export_generator(out / "run", out / "gen.onnx").path
    yield fastmmgan.load_generator(out / "run"), OnnxGenerator(path, device="cpu", intra_op_threads=1)
    torch.set_num_threads(old_threads)
    _print(request.config)


def _print(config: pytest.Config) -> None:
    lines = ["Sampling end to end, one thread, medians:"]
    for batch in BATCHES:
        if ("interleaved", batch) in MEDIANS:
            t_torch, t_ort = MEDIANS[("interleaved", batch)]
            lines.append(f"  image batch {batch:>2}, interleaved: torch {t_torch * 1e3:7.3f} ms, ort {t_ort * 1e3:7.3f} ms, "
                         f"ORT {t_torch / t_ort:5.2f}x faster (target >= {TARGETS[batch]:g}x)")
    for modalities in ("image", "all"):
        for batch in BATCHES:
            t_torch, t_ort = MEDIANS.get((modalities, batch, "torch")), MEDIANS.get((modalities, batch, "ort"))
            if t_torch and t_ort:
                lines.append(f"  {modalities:>5} batch {batch:>2}: torch {t_torch * 1e3:7.3f} ms, ort {t_ort * 1e3:7.3f} ms, "
                             f"ORT {t_torch / t_ort:5.2f}x faster")
    for clips in (64, 1):
        t = MEDIANS.get(("audio decode", clips))
        if t:
            target = f" (target <= {AUDIO_TARGET_MS:g} ms)" if clips > 1 else ""
            lines.append(f"  audio decode, {clips:>2} clip(s) per call: {t / clips * 1e3:6.3f} ms per clip{target}")
    print_summary(config, lines)


@pytest.mark.parametrize("engine", ["torch", "ort"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("modalities", ["image", "all"])
def test_sample(benchmark, engines, modalities, batch, engine):
    sampler, onnx_gen = engines
    given = {"text": ["seven"] * batch}
    wanted = ["image"] if modalities == "image" else None
    expected = sampler.sample(batch, given, seed=0, modalities=wanted)
    got = onnx_gen.sample(batch, given, seed=0, modalities=wanted)
    assert expected.keys() == got.keys()
    for name in expected:
        if name == "text":
            continue  # given, so returned as given by both
        assert np.abs(np.asarray(expected[name]) - np.asarray(got[name])).max() <= 1e-3, name
    source = sampler if engine == "torch" else onnx_gen
    benchmark.group = f"sample {modalities} batch {batch}"
    benchmark.extra_info.update(batch=batch, engine=engine, modalities=modalities, threads=1)
    benchmark(source.sample, batch, given, seed=0, modalities=wanted)
    if benchmark.stats is not None:
        MEDIANS[(modalities, batch, engine)] = benchmark.stats.stats.median


@pytest.mark.parametrize("batch", BATCHES)
def test_sample_image_interleaved(benchmark, engines, batch):
    """One PyTorch call, then one ONNX Runtime call, per round: each engine's median from the same rounds."""
    sampler, onnx_gen = engines
    given = {"text": ["seven"] * batch}
    np.testing.assert_allclose(onnx_gen.sample(batch, given, seed=0, modalities="image")["image"],
                               sampler.sample(batch, given, seed=0, modalities="image")["image"], atol=1e-5)
    times: dict[str, list[float]] = {"torch": [], "ort": []}

    def one_round() -> None:
        for name, source in (("torch", sampler), ("ort", onnx_gen)):
            start = time.perf_counter()
            source.sample(batch, given, seed=0, modalities="image")
            times[name].append(time.perf_counter() - start)

    benchmark.group = f"sample image batch {batch}, interleaved pair"
    benchmark.pedantic(one_round, rounds=400 if batch == 1 else 100, warmup_rounds=20)
    if benchmark.stats is not None:
        MEDIANS[("interleaved", batch)] = (float(np.median(times["torch"])), float(np.median(times["ort"])))


@pytest.mark.parametrize("clips", [64, 1])
def test_audio_decode(benchmark, engines, clips):
    ds = load_digits_dataset()
    m = ds.names.index("audio")
    spec, feats = ds.specs[m], ds.features[m][:clips]
    waves = spec.decode(feats)
    # Numerics gate: the decoded clips' spectrograms match the magnitudes the features describe (classic
    # Griffin-Lim's 32 iterations reach 0.158 on these clips, fast Griffin-Lim's 16 about 0.15).
    pair = stft_pair(spec.n_fft, spec.hop, spec.clip_samples)
    assert np.isfinite(waves).all() and np.abs(waves).max() <= 1.0
    assert spectral_convergence(waves, audio_magnitude(spec, feats), pair) < 0.2
    benchmark.group = "audio decode"
    benchmark.extra_info.update(clips=clips, threads=1)
    benchmark(spec.decode, feats)
    if benchmark.stats is not None:
        MEDIANS[("audio decode", clips)] = benchmark.stats.stats.median
