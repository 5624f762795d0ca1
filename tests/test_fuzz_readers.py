"""Property tests on the dataset readers: damaged image and audio files, and damaged metadata files, end in a
result of the promised shape or one clear error (:class:`BadFile` from a reader, :class:`FastMMGANError` from
the folder reader and the preparation), never another exception or a hang."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastmmgan.errors import FastMMGANError
from fastmmgan.file_readers import BadFile, audio_info, image_info, read_audio, read_image
from fastmmgan.prepare import PrepareSettings, prepare
from fastmmgan.tables import folder_table

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _audio_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    t = np.arange(800) / 8000
    sf.write(buf, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.5, 8000, format=fmt)
    return buf.getvalue()


FILES = {"png": _image_bytes("PNG"), "jpeg": _image_bytes("JPEG"), "wav": _audio_bytes("WAV"),
         "flac": _audio_bytes("FLAC")}


@st.composite
def damaged(draw, kind: str) -> bytes:
    """A valid file of ``kind`` with bytes overwritten, or cut short, or both."""
    data = bytearray(FILES[kind])
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos : pos + 4] = draw(st.binary(min_size=1, max_size=4))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
@FUZZ
@given(data=st.data())
def test_damaged_images_are_read_or_refused(kind, data):
    blob = data.draw(damaged(kind))
    try:
        image_info(blob)
        pixels = read_image(blob, (6, 5), 3)
    except BadFile as e:
        assert str(e) and "\n" not in str(e)
        return
    assert pixels.shape == (6, 5, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("kind", ["wav", "flac"])
@FUZZ
@given(data=st.data())
def test_damaged_audio_is_read_or_refused(kind, data):
    blob = data.draw(damaged(kind))
    try:
        audio_info(blob)
        wave = read_audio(blob, 16000, max_samples=3000)
    except BadFile as e:
        assert str(e) and "\n" not in str(e)
        return
    assert wave.ndim == 1 and wave.dtype == np.float32 and len(wave) <= 3000
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)


@FUZZ
@given(records=st.lists(st.dictionaries(st.sampled_from(["file_name", "caption", "label", "audio_file_name", "x"]),
                                        JSON_VALUES | st.sampled_from(["0.png", "a.wav", "gone.png", "b c"]),
                                        max_size=4), min_size=1, max_size=4),
       tail=st.text(max_size=20))
def test_damaged_metadata_is_read_or_refused(tmp_path_factory, records, tail):
    d = tmp_path_factory.mktemp("meta")
    (d / "0.png").write_bytes(FILES["png"])
    (d / "a.wav").write_bytes(FILES["wav"])
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    try:
        folder_table(d)
        prepare(str(d), PrepareSettings(image_size=(6, 5)), root=d / "cache", progress=False)
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(text=st.lists(st.sampled_from([*'ab,"\n\r 0.', "png", "wav", "file_name", "caption"]), max_size=40).map("".join))
def test_damaged_csv_is_read_or_refused(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("csv")
    (d / "0.png").write_bytes(FILES["png"])
    (d / "metadata.csv").write_text(text)
    try:
        folder_table(d)
        prepare(str(d), PrepareSettings(image_size=(6, 5)), root=d / "cache", progress=False)
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)
