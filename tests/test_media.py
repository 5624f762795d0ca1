"""Reading WAV conditions: the formats audio tools export, mixed down and resampled, and clear errors; image grids,
sample sheets and picture conditions, grey and RGB."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from fastmmgan.media import image_grid, read_wav, wav_bytes

RATE = 16000


def tone(rate: int = RATE, seconds: float = 0.25, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pcm24(path, samples: np.ndarray, rate: int) -> None:
    """A 24-bit PCM WAV of samples [T] or [T, channels] (scipy cannot write them; the stdlib writes the bytes)."""
    ints = np.round(samples * (2**23 - 1)).astype("<i4")
    raw = np.frombuffer(ints.tobytes(), dtype=np.uint8).reshape(-1, 4)[:, :3].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        w.setsampwidth(3)
        w.setframerate(rate)
        w.writeframes(raw)


@pytest.mark.parametrize("fmt", ["int16", "int24", "int32", "float32", "float64", "uint8"])
def test_pcm_and_float_files_read_back_as_the_waveform(tmp_path, fmt):
    source = tone()
    path = tmp_path / f"{fmt}.wav"
    if fmt == "int24":
        pcm24(path, source, RATE)
    elif fmt == "uint8":
        wavfile.write(path, RATE, np.round(source * 127 + 128).astype(np.uint8))
    elif fmt.startswith("int"):
        bits = int(fmt[3:])
        wavfile.write(path, RATE, np.round(source * (2 ** (bits - 1) - 1)).astype(fmt))
    else:
        wavfile.write(path, RATE, source.astype(fmt))
    got, rate = read_wav(path)
    assert rate == RATE and got.dtype == np.float32 and got.shape == source.shape
    np.testing.assert_allclose(got, source, atol=1.5 / 128 if fmt == "uint8" else 1e-4)


def test_stereo_is_mixed_down_and_other_rates_resampled(tmp_path):
    left, right = tone(48000, hz=440.0), tone(48000, hz=440.0) * 0.5
    path = tmp_path / "stereo.wav"
    wavfile.write(path, 48000, np.stack([left, right], axis=1))
    got, rate = read_wav(path, sample_rate=8000)
    assert rate == 8000 and got.shape == (2000,)
    expected = 0.75 * tone(8000, hz=440.0)
    # Polyphase resampling: the 440 Hz tone survives with its amplitude (edges aside, where the filter ramps).
    np.testing.assert_allclose(got[100:-100], expected[100:-100], atol=2e-2)


def test_round_trip_of_our_own_files():
    source = tone(8000)
    got, rate = read_wav(io.BytesIO(wav_bytes(source, 8000)))
    assert rate == 8000
    np.testing.assert_allclose(got, source, atol=1 / 32767)


def test_not_a_wav_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError):
        read_wav(path)


def test_generate_takes_a_24_bit_stereo_wav_at_another_rate(tiny_run, tmp_path, capsys):
    """``--given audio=clip.wav`` with a file as audio tools export it (24-bit, stereo, 16 kHz for an 8 kHz
    model) conditions generation; a broken file is one error line and exit 2."""
    from fastmmgan import generate
    from fastmmgan.cli import run_cli

    clip = tmp_path / "clip.wav"
    pcm24(clip, np.stack([tone(), tone()], axis=1), RATE)
    out = tmp_path / "out"
    assert generate.main([str(tiny_run), "--n", "2", "--given", f"audio={clip}", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"image.png", "text.txt", "audio.wav"}
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: generate.main([str(tiny_run), "--given", f"audio={broken}", "--out", str(tmp_path / "x")]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith(f"error: --given audio: cannot read {broken} as a WAV file: not a readable WAV file")


def red_left_blue_right(n=1, h=4, w=6):
    """n RGB images [n, h, w, 3]: pure red on the left half, pure blue on the right half."""
    img = np.zeros((n, h, w, 3), np.float32)
    img[:, :, : w // 2, 0] = 1.0
    img[:, :, w // 2 :, 2] = 1.0
    return img


def test_image_grid_tiles_rgb_images_with_their_colours():
    """Two [4, 6, 3] images side by side, scale 2, one pixel of mid-grey between and around them."""
    grid = image_grid(red_left_blue_right(2), rows=1, scale=2, pad=1)
    assert grid.mode == "RGB" and grid.size == ((2 * (6 + 1) + 1) * 2, (4 + 1 + 1) * 2)
    px = np.asarray(grid)
    red, blue, grey = [255, 0, 0], [0, 0, 255], [128, 128, 128]
    for left in (1, 1 + 6 + 1):  # each image's first column, in grid pixels before scaling
        for row in range(1, 5):
            assert px[2 * row, 2 * left].tolist() == red and px[2 * row + 1, 2 * (left + 2) + 1].tolist() == red
            assert px[2 * row, 2 * (left + 3)].tolist() == blue and px[2 * row, 2 * (left + 5) + 1].tolist() == blue
    assert px[0, 0].tolist() == grey and px[2, 2 * 7].tolist() == grey and px[-1, -1].tolist() == grey


def test_image_grid_of_grey_images_is_mode_l_on_the_same_grey():
    images = np.zeros((2, 4, 6), np.float32)
    images[0, 0, 0] = 1.0
    grid = image_grid(images, rows=1, scale=1, pad=1)
    assert grid.mode == "L" and grid.size == (15, 6)
    px = np.asarray(grid)
    assert px[1, 1] == 255 and px[1, 2] == 0 and px[0, 0] == 128 and px[1, 7] == 128
    with pytest.raises(ValueError, match=r"\[n, H, W, 3\], got shape \[2, 4, 6, 4\]"):
        image_grid(np.zeros((2, 4, 6, 4), np.float32))


def test_sample_sheets_of_a_colour_model_are_rgb(tiny_colour_run, tmp_path):
    """write_samples' image sheets: RGB PNGs of the generator's own images."""
    import torch

    from fastmmgan.data import MultimodalDataset
    from fastmmgan.sample_grids import PER_CONDITION, write_samples
    from fastmmgan.sampler import load_generator

    generator = load_generator(tiny_colour_run).generator
    photo, caption = generator.specs
    rng = torch.Generator().manual_seed(0)
    ds = MultimodalDataset(generator.specs, (torch.rand(3, photo.dim, generator=rng), caption.encode(["red"] * 3)),
                           torch.ones(3, 2, dtype=torch.bool))
    written = {p.name for p in write_samples(generator, ds, tmp_path, seed=0)}
    assert written == {"noise_to_photo", "noise_to_caption", "photo_to_caption", "caption_to_photo"}
    sheet = Image.open(tmp_path / "noise_to_photo.png")
    n = len(ds) * PER_CONDITION  # one row per example condition (3, no labels), PER_CONDITION samples each
    z = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = generator(z, [torch.zeros(n, s.dim) for s in generator.specs], torch.zeros(n, 2, dtype=torch.bool))[0]
    expected = image_grid(photo.decode(feats), rows=PER_CONDITION)
    assert sheet.mode == "RGB" and np.array_equal(np.asarray(sheet), np.asarray(expected))
    assert Image.open(tmp_path / "caption_to_photo.png").mode == "RGB"


def _save_png(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


def test_generate_reads_a_colour_photo_and_writes_an_rgb_grid(tiny_colour_run, tmp_path):
    """``--given photo=file.png`` for an RGB model: read as RGB, shrunk to [4, 6] with averaging; the written
    photo.png (the condition, given back) has its colours where they were."""
    from fastmmgan import generate
    from fastmmgan.sampler import load_generator

    spec = load_generator(tiny_colour_run).modalities[0]
    big = (red_left_blue_right(h=40, w=60)[0] * 255).astype(np.uint8)
    photo = generate.parse_given([f"photo={_save_png(tmp_path / 'photo.png', big)}"], (spec,))["photo"]
    assert photo.shape == (4, 6, 3) and photo.dtype == np.float32
    assert np.array_equal(photo[:, 0], [[1.0, 0.0, 0.0]] * 4) and np.array_equal(photo[:, -1], [[0.0, 0.0, 1.0]] * 4)
    checks = (np.indices((40, 60)).sum(axis=0) % 2 * 255).astype(np.uint8)  # one-pixel checks: averaging gives grey
    grey = generate.parse_given([f"photo={_save_png(tmp_path / 'checks.png', checks)}"], (spec,))["photo"]
    assert grey.shape == (4, 6, 3) and np.abs(grey - 0.5).max() < 0.01
    out = tmp_path / "out"
    assert generate.main([str(tiny_colour_run), "--n", "2", "--given", f"photo={tmp_path / 'photo.png'}",
                          "--out", str(out)]) == 0
    written = Image.open(out / "photo.png")
    assert written.mode == "RGB" and np.array_equal(np.asarray(written), np.asarray(image_grid(np.stack([photo, photo]))))
    assert np.asarray(written)[4, 4].tolist() == [255, 0, 0] and np.asarray(written)[4, 4 * 6].tolist() == [0, 0, 255]
    assert (out / "caption.txt").is_file()
