"""Sessions specialised to one call pattern (given and wanted modalities): smaller graphs, the same samples."""

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import fastmmgan
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.export import runtime as runtime_module
from fastmmgan.export.specialise import specialise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return export_generator(tiny_run, tmp_path_factory.mktemp("specialise") / "gen.onnx").path


def test_specialised_graph_is_smaller_and_gives_the_same_outputs(exported):
    model = onnx.load(exported)
    mask = np.array([[0, 1, 0]], np.float32)
    small = specialise(model, {"image": np.zeros((1, 64), np.float32), "audio": np.zeros((1, 576), np.float32),
                               "mask": mask}, ["image_out"])
    assert [i.name for i in small.graph.input] == ["z", "text"]
    assert [o.name for o in small.graph.output] == ["image_out"]
    assert "Split" not in {n.op_type for n in small.graph.node}
    heads = [numpy_helper.to_array(i) for i in small.graph.initializer if i.name.endswith("head_weight")]
    assert [h.shape[0] for h in heads] == [64]  # only the image rows of the shared head are kept
    size = sum(numpy_helper.to_array(i).size for i in small.graph.initializer)
    assert size < 0.8 * sum(numpy_helper.to_array(i).size for i in model.graph.initializer)

    rng = np.random.default_rng(0)
    z, text = rng.standard_normal((5, 8), dtype=np.float32), (rng.random((5, 25)) > 0.8).astype(np.float32)
    full = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    expected = full.run(["image_out"], {"z": z, "image": np.zeros((5, 64), np.float32), "text": text,
                                        "audio": np.zeros((5, 576), np.float32), "mask": np.repeat(mask, 5, axis=0)})[0]
    got = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z, "text": text})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("given, wanted", [({"text": "seven"}, ["image"]), (None, ["text", "audio"]),
                                           ({"image": np.zeros((8, 8), np.float32), "text": "two"}, None)])
def test_sample_uses_a_specialised_session_with_the_full_graphs_samples(exported, tiny_run, given, wanted):
    onnx_gen = OnnxGenerator(exported, device="cpu")
    got = onnx_gen.sample(6, given, seed=4, modalities=wanted)
    assert any(s is not None for s in onnx_gen._specialised.values())
    expected = fastmmgan.load_generator(tiny_run).sample(6, given, seed=4, modalities=wanted)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, list):
            assert got[name] == value
        else:
            np.testing.assert_allclose(got[name], value, atol=1e-3)  # decoded audio's bound


def test_a_specialised_session_that_disagrees_is_not_used(exported, monkeypatch, caplog):
    def wrong(model, constants, outputs):
        small = specialise(model, constants, outputs)
        bias = next(i for i in small.graph.initializer if i.name.endswith("head_bias"))
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))
        return small

    monkeypatch.setattr(runtime_module, "specialise", wrong)
    onnx_gen = OnnxGenerator(exported, device="cpu")
    with caplog.at_level(logging.WARNING, logger="fastmmgan.export"):
        got = onnx_gen.sample(3, {"text": "seven"}, seed=1, modalities=["image"])
    assert "disagreed with the full graph" in caplog.text
    assert list(onnx_gen._specialised.values()) == [None]
    feats, _ = onnx_gen.sample_features(3, {"text": "seven"}, seed=1)
    np.testing.assert_array_equal(got["image"], feats[0].numpy().reshape(3, 8, 8).clip(0, 1))
