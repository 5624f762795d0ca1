"""Property tests on the file parsers: damaged PNG, WAV and ``.npy`` conditions for ``generate --given``,
checkpoints, ONNX files and their metadata, and a run's ``config.json`` end in a result or one clear error
(:class:`FastMMGANError`, one line), never another exception or a hang.

Each case starts from a valid file and damages it the way files get damaged: bytes overwritten, the file cut
short, or (for the structured ones) a field replaced by an arbitrary JSON value."""

import io
import json
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fastmmgan
from fastmmgan.data import digits_specs
from fastmmgan.errors import FastMMGANError
from fastmmgan.evaluate import _onnx_run_config
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.generate import parse_given
from fastmmgan.sampler import encode_conditions

SPECS = digits_specs()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint8) * 4).reshape(8, 8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(600) * 0.3) * 12000).astype("<i2").tobytes())
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def damaged(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with up to 8 bytes overwritten, then possibly cut short."""
    size = len(original)

    def apply(edits: list[tuple[int, int]], keep: int) -> bytes:
        data = bytearray(original)
        for pos, value in edits:
            data[pos % size] = value
        return bytes(data[:keep])

    edits = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), max_size=8)
    return st.builds(apply, edits, st.one_of(st.just(size), st.integers(0, size)))


def _one_line_error(call) -> None:
    try:
        call()
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)


CONDITION_FILES = {"image.png": ("image", _png()), "image.npy": ("image", _npy(np.full((8, 8), 0.5, np.float32))),
                   "audio.wav": ("audio", _wav()), "audio.npy": ("audio", _npy(np.zeros(1024, np.float32)))}


@pytest.mark.parametrize("name", CONDITION_FILES)
def test_valid_condition_files_are_read(tmp_path, name):
    modality, data = CONDITION_FILES[name]
    (tmp_path / name).write_bytes(data)
    xs, mask, _ = encode_conditions(SPECS, 2, parse_given([f"{modality}={tmp_path / name}"], SPECS))
    assert mask[:, [s.name for s in SPECS].index(modality)].all()


@pytest.mark.parametrize("name", CONDITION_FILES)
@FUZZ
@given(data=st.data())
def test_damaged_condition_files_are_read_or_named(tmp_path, name, data):
    modality, original = CONDITION_FILES[name]
    path = tmp_path / name
    path.write_bytes(data.draw(damaged(original)))
    _one_line_error(lambda: encode_conditions(SPECS, 2, parse_given([f"{modality}={path}"], SPECS)))


@pytest.fixture(scope="module")
def files(tiny_run, tmp_path_factory):
    """A valid checkpoint and ONNX file of the tiny model, as bytes, and its run config as a dict."""
    out = tmp_path_factory.mktemp("fuzz_files")
    onnx_path = export_generator(tiny_run, out / "gen.onnx").path
    ckpt = Path(tiny_run) / "checkpoints" / "last.pt"
    ckpt = ckpt if ckpt.is_file() else next((Path(tiny_run) / "checkpoints").glob("*.pt"))
    config = torch.load(ckpt, weights_only=True)["config"]  # what the run's config.json holds
    return {"ckpt": ckpt.read_bytes(), "onnx": onnx_path.read_bytes(), "config": config}


def test_valid_files_load(files, tmp_path):
    (tmp_path / "last.pt").write_bytes(files["ckpt"])
    assert fastmmgan.load_generator(tmp_path / "last.pt").sample(1, seed=0, modalities="text")
    assert OnnxGenerator(files["onnx"], device="cpu").sample(1, seed=0, modalities="text")


@FUZZ
@given(data=st.data())
def test_damaged_checkpoints_load_or_are_named(files, tmp_path, data):
    path = tmp_path / "last.pt"
    path.write_bytes(data.draw(damaged(files["ckpt"])))
    _one_line_error(lambda: fastmmgan.load_generator(path).sample(1, seed=0, modalities="text"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_checkpoints_with_damaged_fields_load_or_are_named(files, tmp_path, data):
    state = torch.load(io.BytesIO(files["ckpt"]), weights_only=True)
    section = data.draw(st.sampled_from(["config", "specs"]))
    if section == "config":
        key = data.draw(st.sampled_from(sorted(state["config"])))
        state["config"][key] = data.draw(json_values)
    else:
        spec = dict(state["specs"][data.draw(st.integers(0, len(state["specs"]) - 1))])
        key = data.draw(st.sampled_from(sorted(spec)))
        spec[key] = data.draw(json_values)
        state["specs"] = [spec] + list(state["specs"][1:])
    torch.save(state, tmp_path / "last.pt")
    _one_line_error(lambda: fastmmgan.load_generator(tmp_path / "last.pt").sample(1, seed=0, modalities="text"))


@FUZZ
@given(data=st.data())
def test_damaged_onnx_files_load_or_are_named(files, data):
    _one_line_error(lambda: OnnxGenerator(data.draw(damaged(files["onnx"])), device="cpu").sample(1, seed=0))


@FUZZ
@given(data=st.data())
def test_onnx_files_with_damaged_metadata_load_or_are_named(files, data):
    model = onnx.load_from_string(files["onnx"])
    props = {p.key: p.value for p in model.metadata_props}
    key = data.draw(st.sampled_from(sorted(props)))
    if key.endswith("modalities") and data.draw(st.booleans()):
        specs = json.loads(props[key])
        field = data.draw(st.sampled_from(sorted(specs[0])))
        specs[0][field] = data.draw(json_values)
        props[key] = json.dumps(specs)
    else:
        props[key] = data.draw(st.one_of(st.text(max_size=12), json_values.map(json.dumps)))
    onnx.helper.set_model_props(model, props)
    _one_line_error(lambda: OnnxGenerator(model.SerializeToString(), device="cpu").sample(1, seed=0))


@FUZZ
@given(data=st.data())
def test_damaged_run_configs_load_or_are_named(files, tmp_path, data):
    config = dict(files["config"])
    if data.draw(st.booleans()):
        config[data.draw(st.sampled_from(sorted(config)))] = data.draw(json_values)
        text = json.dumps(config)
    else:
        text = data.draw(damaged(json.dumps(config).encode())).decode("latin-1")
    (tmp_path / "config.json").write_text(text, encoding="latin-1")
    _one_line_error(lambda: _onnx_run_config(tmp_path / "gen.onnx", None))
