"""ONNX export and the ONNX Runtime sampler: graph contents, metadata, parity with PyTorch, failures."""

import contextlib
import io
import json
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import fastmmgan
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.cli import run_cli
from fastmmgan.config import TrainConfig
from fastmmgan.errors import FastMMGANError
from fastmmgan.export import (
    TOLERANCES,
    GeneratorMetadata,
    OnnxGenerator,
    export_generator,
    exporter,
    io_names,
    nonstandard_ops,
)
from fastmmgan.export import __main__ as export_cli
from fastmmgan.export.exporter import mask_patterns
from fastmmgan.export.runtime import CPU_PROVIDER, cuda_device_count, session_options
from fastmmgan.modalities import ModalitySpec
from fastmmgan.sampler import batch_size_of, generator_from_state

ATOL, RTOL = TOLERANCES["fp32"]
AUDIO_ATOL = 1e-3
TINY = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The CLI's export of the run (plus a Triton repository) and what it printed."""
    out = tmp_path_factory.mktemp("export")
    path, repo = out / "gen.onnx", out / "triton"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert export_cli.main([str(run_dir), "--out", str(path), "--triton-repo", str(repo)]) == 0
    return path, repo, stdout.getvalue().splitlines()


@pytest.fixture(scope="module")
def torch_gen(run_dir):
    return generator_from_state(load_checkpoint(run_dir)).eval()


@pytest.fixture(scope="module")
def onnx_gen(exported):
    return OnnxGenerator(exported[0], device="cpu")


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: export_cli.main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_prints_parity_and_writes_files(exported):
    path, repo, printed = exported
    assert printed[0].startswith("parity batch 1: max abs error ")
    assert printed[1].startswith("parity batch 9: max abs error ")
    assert all(float(line.split("max abs error ")[1].split()[0]) <= ATOL for line in printed[:2])
    assert printed[2].startswith(f"wrote {path} (")
    assert (repo / "gen" / "1" / "model.onnx").read_bytes() == path.read_bytes()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_triton_config_lists_every_tensor_with_implicit_batch(exported, onnx_gen):
    config = (exported[1] / "gen" / "config.pbtxt").read_text()
    assert 'name: "gen"' in config and 'backend: "onnxruntime"' in config and "max_batch_size: 1024" in config
    assert "dynamic_batching {" in config
    inputs, outputs = io_names(onnx_gen.modalities)
    widths = [onnx_gen.z_dim, *(s.dim for s in onnx_gen.modalities), 3, *(s.dim for s in onnx_gen.modalities)]
    for name, width in zip(inputs + outputs, widths, strict=True):
        assert f'name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {width} ]' in config


def test_graph_has_only_standard_ops_and_one_batch_axis(exported):
    model = onnx.load(exported[0], load_external_data=False)
    assert nonstandard_ops(model) == []
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert not {n.op_type for n in model.graph.node} & exporter.RANDOM_OPS
    assert {"Gemm", "LeakyRelu", "Sigmoid"} <= {n.op_type for n in model.graph.node}
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["z", "image", "text", "audio", "mask"]
    assert [o.name for o in model.graph.output] == ["image_out", "text_out", "audio_out"]
    batch_axes = {v.type.tensor_type.shape.dim[0].dim_param for v in [*model.graph.input, *model.graph.output]}
    assert batch_axes == {"batch"}


def test_nonstandard_ops_are_reported():
    node = onnx.helper.make_node("FusedDense", ["x"], ["y"], domain="com.example")
    rand = onnx.helper.make_node("RandomNormal", [], ["r"], shape=[1])
    graph = onnx.helper.make_graph([node, rand], "g", [], [])
    assert nonstandard_ops(onnx.helper.make_model(graph)) == ["com.example::FusedDense", "random op RandomNormal"]


def test_metadata_round_trip(exported, run_dir, onnx_gen):
    state = load_checkpoint(run_dir)
    model = onnx.load(exported[0])
    meta = GeneratorMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.specs == tuple(ModalitySpec.from_dict(d) for d in state["specs"])
    assert meta.specs[1].vocab == tuple(state["specs"][1]["vocab"])
    assert meta.specs[2].sample_rate == 8000 and meta.specs[2].n_bins == 64
    assert meta.z_dim == TINY.z_dim and meta.precision == "fp32" and meta.step == state["step"]
    assert meta.version == fastmmgan.__version__
    assert meta.config_hash == TrainConfig.from_dict(state["config"]).model_hash()
    assert GeneratorMetadata.from_props(meta.to_props()) == meta
    assert onnx_gen.metadata == meta and onnx_gen.modalities == fastmmgan.load_generator(run_dir).modalities
    assert model.producer_name == "fastmmgan"


def _assert_parity(onnx_gen, torch_gen, batch, mask, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, torch_gen.z_dim, generator=gen)
    xs = [torch.rand(batch, s.dim, generator=gen) for s in torch_gen.specs]
    with torch.no_grad():
        expected = torch_gen(z, xs, mask.bool())
    got = onnx_gen.run(z.numpy(), [x.numpy() for x in xs], mask.numpy())
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32 and g.shape == tuple(e.shape)
        np.testing.assert_allclose(g, e.numpy(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("pattern", range(8))
def test_parity_batch_1_every_mask_pattern(onnx_gen, torch_gen, pattern):
    mask = ((torch.tensor([[pattern]]) >> torch.arange(3)) & 1).float()
    _assert_parity(onnx_gen, torch_gen, 1, mask, seed=pattern)


@pytest.mark.parametrize("batch", [7, 1024])
def test_parity_large_batches_cycle_every_mask_pattern(onnx_gen, torch_gen, batch):
    mask = mask_patterns(batch, 3)
    assert len({tuple(row) for row in mask.tolist()}) == min(batch, 8)
    _assert_parity(onnx_gen, torch_gen, batch, mask, seed=batch)


GIVENS = [
    None,
    {"text": "the number 7"},
    {"text": ["a handwritten seven", "digit 3", "the number 0", "a one", "nine", "two", "4", "five"]},
    {"image": np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)},
    {"audio": np.sin(np.arange(1024, dtype=np.float32) * 0.3) * 0.5},
    {"image": np.full((8, 8), 0.25, dtype=np.float32), "text": "digit five", "audio": np.zeros(700, np.float32)},
]


@pytest.mark.parametrize("given", GIVENS, ids=["noise", "text", "texts", "image", "audio", "all"])
def test_onnx_generator_agrees_with_load_generator(run_dir, onnx_gen, given):
    sampler = fastmmgan.load_generator(run_dir)
    feats_pt, _ = sampler.sample_features(8, given, seed=11)
    feats_ox, _ = onnx_gen.sample_features(8, given, seed=11)
    for a, b in zip(feats_pt, feats_ox, strict=True):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL)
    out_pt, out_ox = sampler.sample(8, given, seed=11), onnx_gen.sample(8, given, seed=11)
    assert out_pt.keys() == out_ox.keys() == {"image", "text", "audio"}
    np.testing.assert_allclose(out_ox["image"], out_pt["image"], atol=ATOL)
    # Griffin-Lim turns float32 rounding of the features into waveform differences of about 1e-4 (1.4e-4
    # with onnxruntime 1.31); the decoder's contract (tests/test_decoding.py) is 1e-3.
    np.testing.assert_allclose(out_ox["audio"], out_pt["audio"], atol=AUDIO_ATOL)
    text_scores = feats_pt[1].numpy()
    clear = np.abs(text_scores - 0.5).min(axis=1) > ATOL
    assert clear.sum() >= 6
    assert [t for t, c in zip(out_ox["text"], clear, strict=True) if c] == [
        t for t, c in zip(out_pt["text"], clear, strict=True) if c
    ]


def test_same_seed_same_samples_and_seeds_differ(onnx_gen):
    a, b, c = (onnx_gen.sample_features(4, seed=s)[0][0] for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_iobinding_path_gives_the_same_outputs(exported, onnx_gen):
    bound = OnnxGenerator(exported[0], device="cpu", use_iobinding=True)
    assert bound.use_iobinding and not onnx_gen.use_iobinding
    for a, b in zip(bound.sample_features(5, seed=2)[0], onnx_gen.sample_features(5, seed=2)[0], strict=True):
        assert torch.equal(a, b)


def test_provider_is_checked_and_logged(exported, caplog):
    with caplog.at_level(logging.INFO, logger="fastmmgan.export"):
        gen = OnnxGenerator(exported[0], intra_op_threads=1)
    if cuda_device_count() == 0:
        assert gen.provider == CPU_PROVIDER and gen.providers == [CPU_PROVIDER]
        with pytest.raises(FastMMGANError, match="cuda"):
            OnnxGenerator(exported[0], device="cuda")
    assert gen.provider in caplog.text and gen.intra_op_threads == 1
    with pytest.raises(FastMMGANError, match="unknown device"):
        OnnxGenerator(exported[0], device="tpu")


def test_session_options_are_set_on_purpose():
    so = session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == session_options().graph_optimization_level
    assert str(so.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(2, allow_spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert session_options().intra_op_num_threads >= 1
    with pytest.raises(FastMMGANError, match="threads must be positive"):
        session_options(0)


def test_run_rejects_wrong_shapes(onnx_gen):
    z = np.zeros((2, onnx_gen.z_dim), np.float32)
    xs = [np.zeros((2, s.dim), np.float32) for s in onnx_gen.modalities]
    with pytest.raises(FastMMGANError, match="'text': expected shape \\[2, 25\\]"):
        onnx_gen.run(z, [xs[0], xs[1][:, :5], xs[2]], np.ones((2, 3), np.float32))
    with pytest.raises(FastMMGANError, match="expected 3 feature arrays"):
        onnx_gen.run(z, xs[:2], np.ones((2, 3), np.float32))


def test_missing_corrupt_or_foreign_model_files(exported, tmp_path):
    with pytest.raises(FastMMGANError, match="ONNX model not found"):
        OnnxGenerator(tmp_path / "none.onnx")
    data = exported[0].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastMMGANError, match="not a loadable ONNX model"):
        OnnxGenerator(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file" * 10)
    with pytest.raises(FastMMGANError, match="not a loadable ONNX model"):
        OnnxGenerator(garbage)
    model = onnx.load(exported[0])
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, foreign)
    with pytest.raises(FastMMGANError, match="no fastmmgan metadata"):
        OnnxGenerator(foreign)


def test_modality_names_must_not_clash_with_graph_names():
    with pytest.raises(FastMMGANError, match="'z' is used twice"):
        io_names([ModalitySpec("z", "text", vocab=("a",))])
    with pytest.raises(FastMMGANError, match="'a_out' is used twice"):
        io_names([ModalitySpec("a", "text", vocab=("x",)), ModalitySpec("a_out", "text", vocab=("y",))])


def test_failed_parity_writes_nothing(run_dir, tmp_path, monkeypatch):
    real_trace = exporter.trace_to_onnx

    def perturbed(*args, **kwargs):
        model = real_trace(*args, **kwargs)
        for init in model.graph.initializer:
            if init.name.endswith("head.bias"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
        return model

    monkeypatch.setattr(exporter, "trace_to_onnx", perturbed)
    out = tmp_path / "gen.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(FastMMGANError, match="differs from PyTorch.*not written"):
        export_generator(run_dir, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["gen.onnx"]


def test_fp16_export_keeps_float32_io_and_passes_looser_parity(run_dir, tmp_path, exported):
    report = export_generator(run_dir, tmp_path / "gen16.onnx", fp16=True)
    assert report.precision == "fp16" and all(r.ok for r in report.parity)
    assert report.size_bytes < 0.6 * exported[0].stat().st_size
    assert any("fp16" in line for line in report.lines())
    gen = OnnxGenerator(report.path, device="cpu")
    assert gen.metadata.precision == "fp16"
    ref, _ = OnnxGenerator(exported[0], device="cpu").sample_features(16, seed=5)
    half, _ = gen.sample_features(16, seed=5)
    atol, rtol = TOLERANCES["fp16"]
    for a, b in zip(half, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_dynamo_exporter_gives_the_same_graph_contract(run_dir, tmp_path, onnx_gen):
    pytest.importorskip("onnxscript")
    report = export_generator(run_dir, tmp_path / "dyn.onnx", exporter="dynamo")
    assert report.exporter == "dynamo" and all(r.ok and r.max_abs_error <= ATOL for r in report.parity)
    model = onnx.load(report.path)
    assert nonstandard_ops(model) == []
    dyn = OnnxGenerator(report.path, device="cpu")
    assert dyn.metadata == onnx_gen.metadata
    for a, b in zip(dyn.sample_features(9, seed=1)[0], onnx_gen.sample_features(9, seed=1)[0], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_cli_errors(run_dir, tmp_path, capsys):
    out = str(tmp_path / "g.onnx")
    assert "checkpoint not found" in _cli_error([str(tmp_path / "none.pt"), "--out", out], capsys)
    assert "opset 99 is outside" in _cli_error([str(run_dir), "--out", out, "--opset", "99"], capsys)
    assert "is a directory" in _cli_error([str(run_dir), "--out", str(tmp_path)], capsys)
    assert "Triton model name" in _cli_error([str(run_dir), "--out", out, "--triton-repo", str(tmp_path),
                                              "--triton-name", "bad name"], capsys)
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"garbage")
    assert "not a readable fastmmgan checkpoint" in _cli_error([str(corrupt), "--out", out], capsys)


# RGB images: a model whose image modality has channels=3 (tiny_colour_run: photo [4, 6, 3], caption).


def red_left_blue_right(h=4, w=6):
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2, 0] = 1.0
    img[:, w // 2 :, 2] = 1.0
    return img


@pytest.fixture(scope="module")
def colour_export(tiny_colour_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("colour")
    return export_generator(tiny_colour_run, out / "colour.onnx", triton_repo=out / "triton")


def test_colour_model_samples_rgb_images_and_onnx_agrees(tiny_colour_run, colour_export):
    """The PyTorch sampler and the exported model give the same [n, H, W, 3] images, from noise or a caption."""
    sampler = fastmmgan.load_generator(tiny_colour_run)
    onnx_rgb = OnnxGenerator(colour_export.path, device="cpu")
    assert onnx_rgb.modalities == sampler.modalities and onnx_rgb.modalities[0].channels == 3
    for given in (None, {"caption": ["red left", "blue right", "red", "left", "right"]}):
        out_pt, out_ox = sampler.sample(5, given, seed=4), onnx_rgb.sample(5, given, seed=4)
        assert out_pt["photo"].shape == out_ox["photo"].shape == (5, 4, 6, 3) and out_ox["photo"].dtype == np.float32
        np.testing.assert_allclose(out_ox["photo"], out_pt["photo"], atol=1e-5)
        feats, _ = sampler.sample_features(5, given, seed=4)
        assert np.array_equal(out_pt["photo"], feats[0].numpy().reshape(5, 4, 6, 3))  # H, W, C order
        assert out_pt["photo"].std() > 0.01  # not one flat colour: the comparison says something


def test_a_given_rgb_image_conditions_both_samplers_alike(tiny_colour_run, colour_export):
    """One [H, W, 3] image counts as one sample and conditions every row; [n, H, W, 3] counts n."""
    sampler = fastmmgan.load_generator(tiny_colour_run)
    onnx_rgb = OnnxGenerator(colour_export.path, device="cpu")
    img = red_left_blue_right()
    assert batch_size_of(sampler.modalities, {"photo": img}) == 1
    assert batch_size_of(sampler.modalities, {"photo": np.stack([img] * 3)}) == 3
    out_pt = sampler.sample(3, {"photo": img}, seed=2)
    out_ox = onnx_rgb.sample(3, {"photo": img}, seed=2)
    assert out_pt["photo"].shape == (3, 4, 6, 3) and all(np.array_equal(p, img) for p in out_pt["photo"])
    feats_pt, _ = sampler.sample_features(3, {"photo": img}, seed=2)
    feats_ox, _ = onnx_rgb.sample_features(3, {"photo": img}, seed=2)
    torch.testing.assert_close(feats_ox[1], feats_pt[1], atol=ATOL, rtol=RTOL)
    assert out_ox["caption"] == out_pt["caption"]
    with pytest.raises(FastMMGANError, match=r"expected images of shape \[n, 4, 6, 3\]"):
        sampler.sample(2, {"photo": np.zeros((2, 4, 6))})


def test_colour_metadata_records_the_channels_and_grey_metadata_does_not(colour_export, exported):
    model = onnx.load(colour_export.path)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["fastmmgan.modalities"])[0] == {
        "name": "photo", "kind": "image", "image_shape": [4, 6], "n_fft": 256, "hop": 128, "channels": 3}
    assert GeneratorMetadata.from_props(props).specs[0].channels == 3
    grey = {p.key: p.value for p in onnx.load(exported[0]).metadata_props}
    assert "channels" not in grey["fastmmgan.modalities"]
    damaged = props["fastmmgan.modalities"].replace('"channels": 3', '"channels": 2')
    with pytest.raises(FastMMGANError, match=r"channels must be 1 \(grey\) or 3 \(RGB\), got 2"):
        GeneratorMetadata.from_props({**props, "fastmmgan.modalities": damaged})


def test_triton_config_declares_rgb_images_as_h_w_3_reshaped_to_the_graphs_features(colour_export, exported):
    config = (colour_export.triton_model / "config.pbtxt").read_text()
    for name in ("photo", "photo_out"):
        assert (f'name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ 4, 6, 3 ]\n    reshape: {{ shape: [ 72 ] }}\n  }}'
                in config)
    assert 'name: "caption"\n    data_type: TYPE_FP32\n    dims: [ 4 ]\n  }' in config
    assert config.count("reshape") == 2
    assert "reshape" not in (exported[1] / "gen" / "config.pbtxt").read_text()  # grey: the graph's own dims


def test_encoding_rgb_images_gives_one_latent_per_image(tiny_colour_run):
    """Sampler.encode takes one [H, W, 3] image or a batch [n, H, W, 3], as the image's H, W, C features."""
    from dataclasses import replace

    from fastmmgan.models import Generator
    from fastmmgan.sampler import Sampler

    specs = fastmmgan.load_generator(tiny_colour_run).modalities
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sampler = Sampler(Generator.from_config(specs, replace(TINY, recon_weight=1.0)))
    img = red_left_blue_right()
    batch = np.stack([img, img[::-1], img[:, ::-1]])
    z = sampler.encode({"photo": batch})
    assert z.shape == (3, TINY.z_dim) and sampler.encode({"photo": img}).shape == (1, TINY.z_dim)
    features = torch.from_numpy(batch.reshape(3, -1).copy())
    mu, _ = sampler.posterior([features, torch.zeros(3, specs[1].dim)], torch.tensor([[True, False]] * 3))
    torch.testing.assert_close(z, mu, rtol=0, atol=0)
    assert not torch.equal(z[0], z[2])  # the mirrored image is another sample
