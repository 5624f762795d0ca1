"""Turning generated features into media: the STFT pair, fast Griffin-Lim, decoding only what is asked for,
and the PyTorch and ONNX Runtime samplers agreeing after decoding on a trained default model."""

import numpy as np
import pytest
import torch

import fastmmgan
from fastmmgan.config import TrainConfig
from fastmmgan.data import load_digits_dataset
from fastmmgan.errors import FastMMGANError
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.generate import main as generate_main
from fastmmgan.griffin_lim import griffin_lim, spectral_convergence, stft_pair
from fastmmgan.modalities import audio_magnitude
from fastmmgan.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_audio():
    """The audio spec of the digits dataset and 48 of its clips' features (exact zeros where a bin is silent)."""
    ds = load_digits_dataset()
    m = ds.names.index("audio")
    return ds.specs[m], ds.features[m][:48]


@pytest.mark.parametrize("n_fft, hop, length", [(256, 128, 1024), (64, 32, 1000), (32, 12, 301)])
def test_stft_pair_matches_torch_and_inverts(n_fft, hop, length):
    pair = stft_pair(n_fft, hop, length)
    wave = torch.randn(3, length, generator=torch.Generator().manual_seed(0))
    expected = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)
    spectra = pair.forward(wave.numpy())
    np.testing.assert_allclose(spectra, expected.transpose(1, 2).numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(pair.inverse(spectra), wave.numpy(), atol=2e-5)
    torch_inverse = torch.istft(expected, n_fft, hop, window=torch.hann_window(n_fft), center=True, length=length)
    np.testing.assert_allclose(pair.inverse(spectra), torch_inverse.numpy(), atol=2e-5)


def test_decode_is_deterministic_and_leaves_the_global_rng_alone(digits_audio):
    spec, feats = digits_audio
    torch.manual_seed(3)
    np.random.seed(3)
    expect_torch, expect_np = torch.rand(1), np.random.rand()
    torch.manual_seed(3)
    np.random.seed(3)
    first, second = spec.decode(feats), spec.decode(feats)
    assert np.array_equal(first, second)
    assert torch.equal(torch.rand(1), expect_torch) and np.random.rand() == expect_np


def test_decode_is_continuous_in_the_features(digits_audio):
    """Two samplers' features differ by float32 rounding; the waveforms may differ by no more than 1e-3.
    Silent bins are exact zeros here, so the nudge also turns 0 into up to 1e-7: a decoder with a step at 0 fails."""
    spec, feats = digits_audio
    u = torch.rand(feats.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    nudge = feats * u * 2**-22 + u.abs() * 1e-7
    a, b = spec.decode(feats), spec.decode(feats + nudge)
    assert np.abs(a - b).max() <= 1e-3
    assert np.abs(a).max() > 0.1  # the clips are not silence


def _classic_griffin_lim(magnitude: np.ndarray, pair, iterations: int) -> np.ndarray:
    """Classic Griffin-Lim from random phase, the decoder this one replaced."""
    k = magnitude.shape[2]
    full = np.zeros((len(magnitude), pair.frames, pair.n_fft // 2 + 1), dtype=np.complex64)
    phase = np.exp(2j * np.pi * np.random.default_rng(0).random(magnitude.shape)).astype(np.complex64)
    for _ in range(iterations):
        full[:, :, :k] = magnitude * phase
        phase = np.exp(1j * np.angle(pair.forward(pair.inverse(full))[:, :, :k])).astype(np.complex64)
    full[:, :, :k] = magnitude * phase
    return pair.inverse(full)


def test_fast_griffin_lim_matches_32_classic_iterations(digits_audio):
    spec, feats = digits_audio
    pair = stft_pair(spec.n_fft, spec.hop, spec.clip_samples)
    magnitude = audio_magnitude(spec, feats)
    fast = spectral_convergence(griffin_lim(magnitude, pair), magnitude, pair)
    classic = spectral_convergence(_classic_griffin_lim(magnitude, pair, 32), magnitude, pair)
    assert fast <= 1.02 * classic, (fast, classic)
    assert fast < 0.2


@pytest.fixture(scope="module")
def trained_default(tmp_path_factory):
    """The default model trained briefly (300 eager steps) and exported."""
    out = tmp_path_factory.mktemp("trained_default")
    cfg = TrainConfig(steps=300, compile=False, device="cpu", sample_every=0, ckpt_every=1000, log_every=1000)
    Trainer(cfg, out / "run").run(progress=False)
    export_generator(out / "run", out / "gen.onnx")
    return fastmmgan.load_generator(out / "run"), OnnxGenerator(out / "gen.onnx", device="cpu")


GIVENS = [None, {"text": ["nine"] * 32}, {"image": np.zeros((8, 8), np.float32)},
          {"audio": np.sin(np.arange(1024, dtype=np.float32) * 0.3) * 0.5}]


@pytest.mark.parametrize("given", GIVENS, ids=["noise", "text", "image", "audio"])
def test_samplers_agree_after_decoding_on_a_trained_model(trained_default, given):
    sampler, onnx_gen = trained_default
    a, b = sampler.sample(32, given, seed=5), onnx_gen.sample(32, given, seed=5)
    assert a.keys() == b.keys() == {"image", "text", "audio"}
    assert a["text"] == b["text"]
    # Features agree to float32 rounding; Griffin-Lim's 16 iterations amplify that on audio to at most 1.2e-3 of
    # full scale (torch 2.14.1 against onnxruntime 1.31.1, the image condition), -58 dB: the bound is 2e-3.
    assert np.abs(a["image"] - b["image"]).max() <= 1e-3
    assert np.abs(a["audio"] - b["audio"]).max() <= 2e-3
    assert np.abs(a["audio"]).max() > 0.05


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_sample_decodes_only_the_modalities_asked_for(trained_default, engine, monkeypatch):
    source = trained_default[0] if engine == "torch" else trained_default[1]
    full = source.sample(4, {"text": "seven"}, seed=2)
    import fastmmgan.modalities as modalities

    def no_audio(*args):
        raise AssertionError("audio decoded though not asked for")

    monkeypatch.setattr(modalities, "_decode_audio", no_audio)
    only = source.sample(4, {"text": "seven"}, seed=2, modalities=["image"])
    assert list(only) == ["image"] and np.array_equal(only["image"], full["image"])
    given_back = source.sample(4, {"text": "seven"}, seed=2, modalities="text")
    assert given_back == {"text": ["seven"] * 4}
    with pytest.raises(FastMMGANError, match="unknown modality 'video'"):
        source.sample(4, modalities=["image", "video"])
    with pytest.raises(FastMMGANError, match="no modality asked for"):
        source.sample(4, modalities=[])


def test_generate_cli_writes_only_the_modalities_asked_for(tiny_run, tmp_path, capsys):
    assert generate_main([str(tiny_run), "--n", "3", "--seed", "1", "--modality", "image", "--modality", "text",
                          "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "text.txt"]
