"""``--fusion attention`` end to end: G, D and the encoder built on it, a run's checkpoint that says so, and its
ONNX export with standard ops and parity on every mask pattern."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import fastmmgan
from fastmmgan.attention_fusion import AttentionFusion
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.cli import run_cli
from fastmmgan.config import TrainConfig
from fastmmgan.data import digits_specs
from fastmmgan.errors import FastMMGANError
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.export.exporter import nonstandard_ops
from fastmmgan.models import Discriminator, Generator, SharedProjection
from fastmmgan.train import main as train_main
from fastmmgan.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = digits_specs()
TINY = dict(batch_size=16, z_dim=8, g_width=32, d_width=32, e_width=32, g_depth=1, d_depth=1, e_depth=1, device="cpu")


def test_every_fusion_of_a_model_follows_the_config():
    cfg = TrainConfig(fusion="attention", recon_weight=1.0, **TINY)
    G, D = Generator.from_config(SPECS, cfg), Discriminator.from_config(SPECS, cfg)
    assert all(isinstance(f, AttentionFusion) for f in (G.fusion, D.fusion, G.encoder.fusion))
    plain = TrainConfig(**TINY)
    assert isinstance(Generator.from_config(SPECS, plain).fusion, SharedProjection)
    assert plain.model_hash() != TrainConfig(fusion="attention", **TINY).model_hash()
    # Runs saved before the option existed hold the shared projection.
    assert TrainConfig.from_dict({k: v for k, v in plain.to_dict().items() if k != "fusion"}).fusion == "projection"


def test_attention_widths_must_split_into_heads(capsys):
    with pytest.raises(FastMMGANError, match="divisible by its 4 heads; g-width gives 30"):
        TrainConfig(fusion="attention", **{**TINY, "g_width": 30})
    for argv, message in ((["--fusion", "attention", "--d-widths", "30,16"], "d-width gives 30"),
                          (["--fusion", "mean"], "invalid choice: 'mean'")):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: train_main(argv))  # noqa: B023 - called at once
        assert e.value.code == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention_run")
    cfg = TrainConfig(steps=3, fusion="attention", compile=False, sample_every=0, ckpt_every=0, **TINY)
    Trainer(cfg, out).run(progress=False)
    return out


def test_the_checkpoint_says_which_fusion_it_holds(attention_run):
    state = load_checkpoint(attention_run)
    assert state["config"]["fusion"] == "attention"
    assert any(".qkv." in k for k in state["ema"])
    sampler = fastmmgan.load_generator(attention_run)
    assert isinstance(sampler.generator.fusion, AttentionFusion)
    out = sampler.sample(4, {"text": "the number 3"}, seed=0)
    assert out["image"].shape == (4, 8, 8) and np.isfinite(out["image"]).all()


def test_attention_fusion_exports_with_standard_ops_and_parity(attention_run, tmp_path):
    path = tmp_path / "attn.onnx"
    report = export_generator(attention_run, path)
    assert all(r.ok for r in report.parity)
    assert nonstandard_ops(onnx.load(path)) == []
    onnx_gen = OnnxGenerator(path, device="cpu")
    torch_gen = fastmmgan.load_generator(attention_run).generator
    patterns = ((torch.arange(8)[:, None] >> torch.arange(3)) & 1).bool()
    mask = patterns.repeat(3, 1)
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(len(mask), torch_gen.z_dim, generator=rng)
    xs = [torch.rand(len(mask), s.dim, generator=rng) for s in SPECS]
    with torch.no_grad():
        expected = torch_gen(z, xs, mask)
    got = onnx_gen.run(z.numpy(), [x.numpy() for x in xs], mask.float().numpy())
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5, rtol=1e-3)


def test_the_server_serves_an_attention_model(attention_run, tmp_path):
    from fastapi.testclient import TestClient

    from fastmmgan.export.server import create_app

    path = tmp_path / "attn.onnx"
    export_generator(attention_run, path)
    generator = OnnxGenerator(path, device="cpu")
    with TestClient(create_app(generator)) as client:
        r = client.post("/generate", json={"n": 3, "given": {"text": "the number 3"}, "seed": 5})
    assert r.status_code == 200, r.text
    expected = generator.sample(3, {"text": "the number 3"}, seed=5)
    np.testing.assert_allclose(np.asarray(r.json()["outputs"]["image"], dtype=np.float32), expected["image"], atol=1e-6)
