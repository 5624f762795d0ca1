"""Model shapes, output ranges, and that a masked-out modality cannot change the output."""

import pytest
import torch

from fastmmgan.data import digits_specs
from fastmmgan.models import DenseStack, Discriminator, FusedDense, Generator, SharedProjection, compose_fake

SPECS = digits_specs()


def _inputs(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, s.dim, generator=g) for s in SPECS]


def test_generator_shapes_and_range():
    gen = Generator(SPECS, z_dim=8, width=32, depth=2)
    given = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    out = gen(torch.randn(5, 8), _inputs(), given)
    assert [o.shape for o in out] == [(5, s.dim) for s in SPECS]
    assert all(0 <= o.min() and o.max() <= 1 for o in out)


def test_discriminator_shape():
    disc = Discriminator(SPECS, width=32, depth=1)
    assert disc(_inputs(), torch.ones(5, 3, dtype=torch.bool)).shape == (5, 1)


def test_masked_out_modality_cannot_change_the_output():
    gen = Generator(SPECS, z_dim=8, width=32, depth=2)
    disc = Discriminator(SPECS, width=32, depth=2)
    a, b = _inputs(seed=1), _inputs(seed=2)
    given = torch.tensor([[1, 0, 0]] * 5, dtype=torch.bool)
    mixed = [a[0], b[1], b[2]]
    z = torch.randn(5, 8)
    for x, y in zip(gen(z, a, given), gen(z, mixed, given)):
        assert torch.equal(x, y)
    assert torch.equal(disc(a, given), disc(mixed, given))
    assert not torch.equal(disc(a, torch.ones_like(given)), disc(mixed, torch.ones_like(given)))


def test_noise_changes_unconditional_samples():
    gen = Generator(SPECS, z_dim=8, width=32, depth=2)
    none = torch.zeros(5, 3, dtype=torch.bool)
    x = gen(torch.randn(5, 8), _inputs(), none)
    y = gen(torch.randn(5, 8), _inputs(), none)
    assert not torch.allclose(x[0], y[0])


def test_layers_keep_nn_linear_state_dicts():
    layer = FusedDense(6, 4)
    linear = torch.nn.Linear(6, 4)
    layer.load_state_dict(linear.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), torch.nn.functional.leaky_relu(linear(x), 0.2))
    stack = DenseStack([4, 4, 4, 4])
    assert len(stack) == 3 and stack(torch.randn(2, 4)).shape == (2, 4)
    proj = SharedProjection([3, 2], 4)
    assert set(proj.state_dict()) == {"bias", "proj.0.weight", "proj.1.weight"}


def test_compose_fake_keeps_given_modalities_real():
    real, gen = _inputs(seed=3), _inputs(seed=4)
    given = torch.tensor([[1, 0, 1]] * 5, dtype=torch.bool)
    fake = compose_fake(real, gen, given)
    assert torch.equal(fake[0], real[0]) and torch.equal(fake[1], gen[1]) and torch.equal(fake[2], real[2])


def test_state_dict_round_trip_gives_identical_outputs():
    """A freshly built generator (other random init) that loads the state dict computes what the original does."""
    torch.manual_seed(0)
    gen = Generator(SPECS, z_dim=8, width=32, depth=1)
    torch.manual_seed(1)
    other = Generator(SPECS, z_dim=8, width=32, depth=1)
    z, given = torch.randn(5, 8), torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert not torch.equal(gen(z, _inputs(), given)[0], other(z, _inputs(), given)[0])
    other.load_state_dict(gen.state_dict())
    for a, b in zip(gen(z, _inputs(), given), other(z, _inputs(), given), strict=True):
        assert torch.equal(a, b)


def test_noise_components_are_a_uniform_one_hot_of_the_argmax():
    gen = Generator(SPECS, z_dim=8, width=32, depth=1, components=4)
    z = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    feats = gen.noise_features(z)
    assert feats.shape == (4000, 12) and torch.equal(feats[:, :8], z)
    onehot = feats[:, 8:] / 8**0.5
    assert torch.equal(onehot.sum(dim=1), torch.ones(4000))
    assert torch.equal(onehot.argmax(dim=1), z[:, :4].argmax(dim=1))
    share = onehot.mean(dim=0)
    assert (share - 0.25).abs().max() < 0.03
    assert gen.fusion.proj[0].weight.shape == (32, 12)
    assert Generator(SPECS, z_dim=8, width=32, depth=1).noise_features(z) is z


def test_conditioned_rows_can_go_without_the_component():
    """With ``conditioned_components=False`` rows given a modality get no one-hot (the condition picks the
    cluster), rows from noise alone keep theirs; the default keeps it everywhere (runs saved before the option)."""
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    given = torch.tensor([[False, False, False], [True, False, False], [False, False, True], [False, False, False]])
    off = Generator(SPECS, z_dim=8, width=32, depth=1, components=4, conditioned_components=False)
    onehot = off.noise_features(z, given)[:, 8:]
    assert onehot.sum(dim=1).tolist() == pytest.approx([8**0.5, 0.0, 0.0, 8**0.5])
    default = Generator(SPECS, z_dim=8, width=32, depth=1, components=4)
    assert torch.equal(default.noise_features(z, given), default.noise_features(z))


def test_noise_components_cannot_exceed_the_noise_size():
    import pytest

    with pytest.raises(ValueError, match="components"):
        Generator(SPECS, z_dim=8, components=9)


def test_per_layer_widths_build_the_seeds_mlp_gan():
    """--g-widths 128,256 / --d-widths 256,128 --mbstd-group 0 on one 28x28 image modality is the seeds'
    G 100-128-256-784 sigmoid and D 784-256-128-1: nothing but those layers (one modality: no data
    projection in the generator, which could never be given it)."""
    from fastmmgan.modalities import ModalitySpec

    specs = [ModalitySpec("image", "image", image_shape=(28, 28))]
    gen = Generator(specs, z_dim=100, widths=(128, 256))
    disc = Discriminator(specs, widths=(256, 128), mbstd_group=0)
    assert {k: tuple(v.shape) for k, v in gen.state_dict().items()} == {
        "fusion.bias": (128,), "fusion.proj.0.weight": (128, 100), "body.0.weight": (256, 128), "body.0.bias": (256,),
        "head.weight": (784, 256), "head.bias": (784,)}
    assert {k: tuple(v.shape) for k, v in disc.state_dict().items()} == {
        "fusion.bias": (256,), "fusion.proj.0.weight": (256, 784), "body.0.weight": (128, 256), "body.0.bias": (128,),
        "head.weight": (1, 128), "head.bias": (1,)}
    out = gen(torch.randn(3, 100), [torch.rand(3, 784)], torch.zeros(3, 1, dtype=torch.bool))
    assert out[0].shape == (3, 784) and disc(out, torch.ones(3, 1, dtype=torch.bool)).shape == (3, 1)
    # A one-modality generator saved when it still projected the (always masked-out) data loads unchanged.
    old = {**gen.state_dict(), "fusion.proj.1.weight": torch.zeros(128, 784)}
    twin = Generator(specs, z_dim=100, widths=(128, 256))
    twin.load_state_dict(old)
    z = torch.randn(2, 100)
    assert torch.equal(twin(z, [torch.rand(2, 784)], torch.zeros(2, 1, dtype=torch.bool))[0],
                       gen(z, [torch.rand(2, 784)], torch.zeros(2, 1, dtype=torch.bool))[0])
