"""Reading WAV conditions: the formats audio tools export, mixed down and resampled, and clear errors."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from scipy.io import wavfile

from fastmmgan.media import read_wav, wav_bytes

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
