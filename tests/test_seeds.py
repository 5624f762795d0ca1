"""Every way of sampling honours its seed: the same seed gives the same samples, another seed others, and the
same seed gives the same samples whichever sampler draws them."""

import numpy as np
import pytest

import fastmmgan
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.data import load_dataset
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.generate import main as generate_main
from fastmmgan.sample_grids import write_samples
from fastmmgan.sampler import generator_from_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GIVEN = {"text": "digit seven"}


@pytest.fixture(scope="module")
def samplers(tiny_run, tmp_path_factory):
    path = export_generator(tiny_run, tmp_path_factory.mktemp("seeds") / "gen.onnx").path
    return {"torch": fastmmgan.load_generator(tiny_run), "onnx": OnnxGenerator(path, device="cpu")}


@pytest.mark.parametrize("engine", ["torch", "onnx"])
@pytest.mark.parametrize("given", [None, GIVEN], ids=["noise", "text"])
def test_sample_honours_its_seed(samplers, engine, given):
    sampler = samplers[engine]
    a, b, c = (sampler.sample(4, given, seed=s, modalities="image")["image"] for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_the_same_seed_gives_the_same_samples_in_every_sampler(samplers):
    torch_out = samplers["torch"].sample(4, GIVEN, seed=7, modalities=["image", "audio"])
    onnx_out = samplers["onnx"].sample(4, GIVEN, seed=7, modalities=["image", "audio"])
    for name in ("image", "audio"):
        assert np.abs(torch_out[name] - onnx_out[name]).max() <= 1e-3


def test_generate_cli_honours_its_seed(tiny_run, tmp_path):
    def image_bytes(seed, out):
        assert generate_main([str(tiny_run), "--n", "4", "--seed", str(seed), "--modality", "image",
                              "--given", "text=digit seven", "--out", str(tmp_path / out)]) == 0
        return (tmp_path / out / "image.png").read_bytes()

    assert image_bytes(3, "a") == image_bytes(3, "b") != image_bytes(4, "c")


def test_training_sample_sheets_honour_their_seed(tiny_run, tmp_path):
    generator = generator_from_state(load_checkpoint(tiny_run))
    ds = load_dataset("digits")

    def sheet(seed, out):
        write_samples(generator, ds, tmp_path / out, seed=seed)
        return (tmp_path / out / "text_to_image.png").read_bytes()

    assert sheet(0, "a") == sheet(0, "b") != sheet(1, "c")
