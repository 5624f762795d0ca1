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


def red_left_blue_right(h=4, w=6):
    """An RGB image [h, w, 3]: pure red on the left half, pure blue on the right half."""
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2, 0] = 1.0
    img[:, w // 2 :, 2] = 1.0
    return img


def test_colour_image_codec_keeps_every_pixels_colour():
    """Features of an RGB image are its pixels in H, W, C order; decode gives them back exactly."""
    spec = ModalitySpec("photo", "image", image_shape=(4, 6), channels=3)
    assert spec.dim == 72 and spec.pixel_shape == (4, 6, 3)
    img = red_left_blue_right()
    rng = np.random.default_rng(0)
    noisy = rng.random((2, 4, 6, 3), dtype=np.float32)
    feats = spec.encode(np.stack([img, *noisy]))
    assert feats.shape == (3, 72) and feats.dtype == torch.float32
    assert feats[0, :3].tolist() == [1.0, 0.0, 0.0]  # pixel (0, 0): red
    assert feats[0, 5 * 3 : 6 * 3].tolist() == [0.0, 0.0, 1.0]  # pixel (0, 5): blue
    assert torch.equal(feats[1], torch.from_numpy(noisy[0].reshape(-1)))
    out = spec.decode(feats)
    assert out.shape == (3, 4, 6, 3) and out.dtype == np.float32
    assert np.array_equal(out[0], img) and np.array_equal(out[1:], noisy)
    assert torch.equal(spec.encode(img), feats[:1])  # one image without the n axis


def test_grey_images_keep_their_features_and_dict():
    """A grey spec's dict (saved in checkpoints and ONNX metadata) has no 'channels' and reads as before."""
    image = digits_specs()[0]
    assert image.to_dict() == {"name": "image", "kind": "image", "image_shape": [8, 8], "n_fft": 256, "hop": 128}
    assert image.channels == 1 and image.dim == 64
    grey = np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    assert torch.equal(image.encode(grey), torch.from_numpy(grey.reshape(2, 64)))
    assert image.decode(image.encode(grey)).shape == (2, 8, 8)


def test_colour_spec_round_trips_through_dict():
    spec = ModalitySpec("photo", "image", image_shape=(4, 6), channels=3)
    d = spec.to_dict()
    assert d["channels"] == 3 and d["image_shape"] == [4, 6]
    again = ModalitySpec.from_dict(d)
    assert again == spec and again.channels == 3 and again.dim == 72
    assert ModalitySpec.from_dict({**d, "channels": 1}) != spec


@pytest.mark.parametrize("make", [
    lambda: ModalitySpec("photo", "image", image_shape=(4, 6), channels=2),
    lambda: ModalitySpec.from_dict({"name": "photo", "kind": "image", "image_shape": [4, 6], "channels": 2}),
])
def test_channels_other_than_grey_or_rgb_are_refused(make):
    with pytest.raises(FastMMGANError, match=r"^modality 'photo': channels must be 1 \(grey\) or 3 \(RGB\), got 2$"):
        make()


def test_only_images_have_colour_channels():
    with pytest.raises(FastMMGANError, match="channels 3 is for image modalities only"):
        ModalitySpec.from_dict({"name": "caption", "kind": "text", "vocab": ["a"], "channels": 3})


def test_the_wrong_number_of_channels_names_the_expected_shape():
    colour = ModalitySpec("photo", "image", image_shape=(4, 6), channels=3)
    with pytest.raises(FastMMGANError, match=r"expected images of shape \[n, 4, 6, 3\] \(RGB, channels last\), got \[2, 4, 6\]$"):
        colour.encode(np.zeros((2, 4, 6)))
    with pytest.raises(FastMMGANError, match=r"expected images of shape \[n, 4, 6, 3\].*got \[2, 4, 6, 4\]$"):
        colour.encode(np.zeros((2, 4, 6, 4)))
    with pytest.raises(FastMMGANError, match=r"expected images \[n, 8, 8\] \(grey\)"):
        digits_specs()[0].encode(np.zeros((2, 8, 8, 3)))


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


def test_npz_colour_images(tmp_path):
    """An .npz image array [N, H, W, 3] is an RGB modality whose features are the pixels in H, W, C order."""
    images = np.stack([red_left_blue_right(), red_left_blue_right()[::-1, ::-1]]).repeat(3, axis=0)
    ds = load_npz_dataset(_write_npz(tmp_path / "c.npz", kinds=np.array(["pic=image", "tag=text"]),
                                     pic=(images * 255).astype(np.uint8), tag=np.array(["red left", "blue left"] * 3)))
    assert ds.specs[0].channels == 3 and ds.specs[0].image_shape == (4, 6)
    np.testing.assert_array_equal(ds.specs[0].decode(ds.features[0][:2]), images[:2])
    with pytest.raises(FastMMGANError, match=r"\[N, H, W\] \(grey\) or \[N, H, W, 3\] \(RGB\)"):
        load_npz_dataset(_write_npz(tmp_path / "b.npz", kinds=np.array(["pic=image"]), pic=np.zeros((4, 2, 2, 2))))
