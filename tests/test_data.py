"""Datasets and modality codecs: shapes, determinism, round trips and every validation error."""

import numpy as np
import pytest
import torch

from fastmmgan.data import DTMF, digits_specs, dtmf_tone, load_dataset, load_digits_dataset, load_npz_dataset
from fastmmgan.errors import FastMMGANError
from fastmmgan.modalities import ModalitySpec


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(seed=0)


def test_digits_shapes_and_ranges(digits):
    assert len(digits) == 1797
    assert digits.names == ("image", "text", "audio")
    for spec, x in zip(digits.specs, digits.features):
        assert x.shape == (1797, spec.dim) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert digits.mask.all() and digits.labels.shape == (1797,)


def test_digits_is_deterministic(digits):
    again = load_digits_dataset(seed=0)
    for a, b in zip(digits.features, again.features):
        assert torch.equal(a, b)
    other = load_digits_dataset(seed=1)
    assert not torch.equal(digits.features[2], other.features[2])


def test_split_is_deterministic_and_disjoint(digits):
    train, test = digits.split(0.2, seed=3)
    train2, test2 = digits.split(0.2, seed=3)
    assert len(test) == round(0.2 * 1797) and len(train) + len(test) == 1797
    assert torch.equal(test.features[0], test2.features[0])
    rows = {tuple(r.tolist()) for r in train.features[2][:50]}
    assert not rows & {tuple(r.tolist()) for r in test.features[2]}


def test_captions_name_their_digit(digits):
    text = digits.specs[1]
    captions = text.decode(digits.features[1][:100])
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for caption, label in zip(captions, digits.labels[:100].tolist()):
        tokens = caption.split()
        assert words[label] in tokens or str(label) in tokens


def test_text_codec_round_trip_and_unknown_words():
    text = digits_specs()[1]
    feats = text.encode(["a handwritten seven", "the number 7"])
    assert text.decode(feats) == ["a handwritten seven", "the number 7"]
    with pytest.raises(FastMMGANError, match="not in the vocabulary: banana, kiwi"):
        text.encode(["seven banana kiwi"])


def test_dtmf_tone_has_the_keypad_frequencies():
    rng = np.random.default_rng(0)
    for digit, (low, high) in DTMF.items():
        wave = dtmf_tone(digit, rng, samples=8000)
        spectrum = np.abs(np.fft.rfft(wave))
        peaks = sorted(np.argsort(spectrum)[-2:].tolist())
        assert abs(peaks[0] - low) <= 2 and abs(peaks[1] - high) <= 2


def test_audio_codec_decodes_to_a_playable_waveform_with_the_same_spectrum(digits):
    audio = digits.specs[2]
    wave = audio.decode(digits.features[2][:4])
    assert wave.shape == (4, audio.clip_samples) and wave.dtype == np.float32
    assert np.abs(wave).max() <= 1.0
    again = audio.encode(wave)
    assert (again - digits.features[2][:4]).abs().mean() < 0.02


def test_image_codec_validates():
    image = digits_specs()[0]
    with pytest.raises(FastMMGANError, match=r"shape \[n, 8, 8\]"):
        image.encode(np.zeros((2, 7, 8)))
    with pytest.raises(FastMMGANError, match="in \\[0, 1\\]"):
        image.encode(np.full((1, 8, 8), 3.0))
    with pytest.raises(FastMMGANError, match="NaN"):
        image.encode(np.full((1, 8, 8), np.nan))


def test_spec_round_trips_through_dict():
    for spec in digits_specs():
        assert ModalitySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(FastMMGANError, match="unknown kind 'video'"):
        ModalitySpec("v", "video")


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid(n=6):
    rng = np.random.default_rng(0)
    return {
        "kinds": np.array(["pic=image", "caption=text", "tone=audio"]),
        "pic": rng.random((n, 5, 4)).astype(np.float32),
        "caption": np.array([f"red circle {i}" for i in range(n)]),
        "tone": rng.uniform(-1, 1, (n, 300)).astype(np.float32),
        "sample_rate": np.array(4000),
        "labels": np.arange(n),
    }


def test_npz_dataset_loads(tmp_path):
    ds = load_npz_dataset(_write_npz(tmp_path / "d.npz", **_valid()))
    assert ds.names == ("pic", "caption", "tone") and len(ds) == 6
    assert ds.specs[0].image_shape == (5, 4)
    assert ds.specs[1].vocab[:2] == ("red", "circle")
    assert ds.specs[2].sample_rate == 4000 and ds.specs[2].clip_samples == 300
    assert ds.mask.all()


def test_npz_mask_and_uint8_images(tmp_path):
    arrays = _valid()
    pixels = (arrays["pic"] * 255).astype(np.uint8)
    pixels.reshape(-1)[:2] = (0, 255)  # both ends of the range present
    arrays["pic"] = pixels
    arrays["mask"] = np.array([[1, 1, 0]] * 6)
    ds = load_dataset(path=_write_npz(tmp_path / "d.npz", **arrays))
    # uint8 is scaled by exactly 1/255: 0 -> 0, 255 -> 1, every value in between in proportion.
    expected = torch.from_numpy(pixels.reshape(len(pixels), -1).astype(np.float32) / 255)
    torch.testing.assert_close(ds.features[0], expected, rtol=0, atol=1e-7)
    assert not ds.mask[:, 2].any()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("kinds"), "missing 'kinds'"),
        (lambda a: a.pop("pic"), "missing from the file: pic"),
        (lambda a: a.update(extra=np.zeros(6)), "not declared in 'kinds': extra"),
        (lambda a: a.update(kinds=np.array(["pic=video"])), "unknown kind 'video'"),
        (lambda a: a.update(kinds=np.array(["pic"])), "not of the form name=kind"),
        (lambda a: a.update(pic=a["pic"][:5]), "different numbers of samples"),
        (lambda a: a.update(pic=a["pic"][:, 0]), r"image data must be \[N, H, W\]"),
        (lambda a: a["tone"].__setitem__((0, 0), np.nan), "NaN or infinite"),
        (lambda a: a.pop("sample_rate"), "needs a 'sample_rate'"),
        (lambda a: a.update(labels=np.zeros(6) + 0.5), "'labels' must be integers"),
        (lambda a: a.update(mask=np.zeros((6, 2))), "'mask' must be 0/1"),
        (lambda a: a.update(caption=np.arange(6)), "text data must be a 1-D string array"),
        (lambda a: a.update(pic=a["pic"][:0], caption=a["caption"][:0], tone=a["tone"][:0], labels=np.arange(0)),
         "empty"),
    ],
)
def test_npz_validation_errors(tmp_path, change, message):
    arrays = _valid()
    change(arrays)
    with pytest.raises(FastMMGANError, match=message):
        load_npz_dataset(_write_npz(tmp_path / "bad.npz", **arrays))


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(FastMMGANError, match="cannot read .*bad.npz"):
        load_npz_dataset(bad)
    with pytest.raises(FastMMGANError, match="not found"):
        load_npz_dataset(tmp_path / "nope.npz")
    with pytest.raises(FastMMGANError, match="unknown built-in dataset 'mnist'"):
        load_dataset("mnist")
