"""Offline quality metrics on cases with known answers: real data, shuffled conditions, a collapsed generator."""

import json

import pytest
import torch

from fastmmgan import evaluate, evaluator_nets
from fastmmgan.cli import run_cli
from fastmmgan.data import MultimodalDataset, load_dataset
from fastmmgan.errors import FastMMGANError
from fastmmgan.evaluator import Evaluator, missing_classes
from fastmmgan.evaluator_nets import cache_key, load_or_train_evaluators
from fastmmgan.metrics import frechet_distance, precision_recall
from fastmmgan.modalities import ModalitySpec
from fastmmgan.models import Generator
from fastmmgan.sampler import draw_noise, encode_conditions, load_generator
from fastmmgan.sampler_protocol import MultimodalSampler

N = 500


class RealData:
    """A "generator" that returns real samples: for a condition, the test row nearest to it (the row it was
    taken from; or, shuffled, a row picked by the noise); from noise, train rows picked by the noise.
    Same call as a Generator."""

    z_dim = 4

    def __init__(self, test_ds, train_ds, shuffle=False, collapse=False):
        self.specs = test_ds.specs
        self.test_ds, self.train_ds, self.shuffle, self.collapse = test_ds, train_ds, shuffle, collapse

    def _rows(self, z, size):
        return (z[:, 0].abs() * 1e6).long() % size

    def __call__(self, z, xs, given):
        if self.collapse:
            return [x[:1].expand(len(z), -1) for x in self.train_ds.features]
        m = torch.nonzero(given[0]).flatten()
        if len(m) == 0:
            return [x[self._rows(z, len(self.train_ds))] for x in self.train_ds.features]
        if self.shuffle:
            idx = self._rows(z, len(self.test_ds))
        else:
            idx = torch.cdist(xs[int(m[0])], self.test_ds.features[int(m[0])]).argmin(dim=1)
        return [x[idx] for x in self.test_ds.features]


class ClassData:
    """A conditional generator as varied as the data: for a condition, a train sample of the condition's class
    picked by the noise (the class read from the test row nearest to the condition); ``collapse`` ignores the
    noise, so every condition gets one sample."""

    z_dim = 4

    def __init__(self, test_ds, train_ds, collapse=False):
        self.specs, self.test_ds, self.train_ds, self.collapse = test_ds.specs, test_ds, train_ds, collapse

    def __call__(self, z, xs, given):
        pick = torch.zeros(len(z), dtype=torch.long) if self.collapse else (z[:, 0].abs() * 1e6).long()
        m = torch.nonzero(given[0]).flatten()
        if len(m) == 0:
            return [x[pick % len(self.train_ds)] for x in self.train_ds.features]
        labels = self.test_ds.labels[torch.cdist(xs[int(m[0])], self.test_ds.features[int(m[0])]).argmin(dim=1)]
        idx = []
        for label, p in zip(labels.tolist(), pick.tolist(), strict=True):
            rows = torch.nonzero(self.train_ds.labels == label).flatten()
            idx.append(rows[p % len(rows)])
        return [x[torch.stack(idx)] for x in self.train_ds.features]


class FeatureSampler:
    """A :class:`~fastmmgan.sampler_protocol.MultimodalSampler` at the feature level around a generator-like callable."""

    def __init__(self, features_source):
        self.inner = features_source
        self.modalities = features_source.specs
        self.z_dim = features_source.z_dim

    def generate(self, z, xs, mask):
        return self.inner(z, xs, mask)

    def sample_features(self, n, given=None, seed=None):
        raise NotImplementedError

    def sample(self, n, given=None, seed=None, modalities=None):
        raise NotImplementedError


class SampleOnly:
    """Raw conditions in, raw samples out, and nothing else: not a MultimodalSampler."""

    def __init__(self, features_source):
        self.modalities = features_source.specs

    def sample(self, n, given=None, seed=None):
        raise AssertionError("the evaluator must refuse this source before sampling")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0).split(0.2, 0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("run") / "evaluators.pt"
    load_or_train_evaluators(data[0], path, seed=0)
    return path


@pytest.fixture(scope="module")
def evaluator(data, cache):
    return Evaluator.build(*data, cache_path=cache, seed=0)


@pytest.fixture(scope="module")
def real_scores(evaluator, data):
    return evaluator.evaluate(RealData(data[1], data[0]), n=N, seed=0)


def test_evaluators_classify_real_test_data(real_scores):
    assert real_scores["evaluator_acc/image"] > 0.95
    assert real_scores["evaluator_acc/text"] > 0.99
    assert real_scores["evaluator_acc/audio"] > 0.99


def test_real_data_scores_near_perfect_accuracy_and_the_floor(real_scores):
    pairs = [(a, b) for a in ("image", "text", "audio") for b in ("image", "text", "audio") if a != b]
    for a, b in pairs:
        assert real_scores[f"acc/{a}_to_{b}"] > (0.95 if "image" in (a, b) else 0.99), (a, b)
    assert real_scores["agreement"] > 0.95
    assert real_scores["coverage"] == 1.0
    assert real_scores["fid"] < 1.5 * real_scores["fid_floor"]
    assert real_scores["fid_ratio"] == pytest.approx(real_scores["fid"] / real_scores["fid_floor"])
    assert real_scores["precision"] > 0.8 and real_scores["recall"] > 0.8
    assert missing_classes(real_scores, "image") == []


def test_shuffled_conditions_score_near_chance(evaluator, data):
    scores = evaluator.evaluate(RealData(data[1], data[0], shuffle=True), n=N, seed=0)
    for key in ("acc/text_to_image", "acc/audio_to_image", "acc/image_to_text", "acc/image_to_audio"):
        assert 0.03 < scores[key] < 0.2, key
    assert scores["coverage"] == 1.0


def test_a_collapsed_generator_has_poor_recall_coverage_and_distance(evaluator, data, real_scores):
    scores = evaluator.evaluate(RealData(data[1], data[0], collapse=True), n=N, seed=0)
    label = int(data[0].labels[0])
    assert scores["coverage"] == pytest.approx(0.1)
    assert missing_classes(scores, "image") == [c for c in range(10) if c != label]
    assert scores[f"class_ratio/image/{label}"] > 5
    assert scores["recall"] < 0.05
    assert scores["fid"] > 10 * real_scores["fid_floor"]


DIRECTIONS = ["text_to_image", "audio_to_image", "image_to_text", "image_to_audio", "text_to_audio", "audio_to_text"]


def test_conditional_samples_as_varied_as_the_data_score_a_spread_of_one(evaluator, data):
    scores = evaluator.evaluate(ClassData(data[1], data[0]), n=400, seed=0)
    for key in DIRECTIONS:
        assert 0.9 <= scores[f"spread/{key}"] <= 1.1, key
        assert 0.9 <= scores[f"spread_embed/{key}"] <= 1.1, key
        assert scores[f"cond_recall/{key}"] >= scores[f"cond_recall_floor/{key}"] - 0.1, key
    for key in ("image_to_text", "audio_to_text"):
        assert abs(scores[f"distinct/{key}"] - scores[f"distinct_real/{key}"]) < 0.5, key
        assert scores[f"distinct/{key}"] > 4


def test_one_sample_per_condition_scores_no_spread_one_caption_and_no_class_recall(evaluator, data):
    """The defect the metric exists for: accurate, but the same output for every noise draw."""
    scores = evaluator.evaluate(ClassData(data[1], data[0], collapse=True), n=400, seed=0)
    for key in DIRECTIONS:
        assert scores[f"acc/{key}"] > 0.8, key
        assert scores[f"spread/{key}"] == 0.0 and scores[f"spread_embed/{key}"] == 0.0, key
        assert scores[f"cond_recall/{key}"] < 0.2 < scores[f"cond_recall_floor/{key}"], key
    assert scores["distinct/image_to_text"] == scores["distinct/audio_to_text"] == 1.0


def test_metrics_are_deterministic_and_the_cache_is_reused(evaluator, data, cache, real_scores):
    mtime = cache.stat().st_mtime_ns
    again = Evaluator.build(*data, cache_path=cache, seed=0).evaluate(RealData(data[1], data[0]), n=N, seed=0)
    assert again == real_scores
    assert cache.stat().st_mtime_ns == mtime


def test_a_stale_or_corrupt_cache_is_rebuilt(data, tmp_path):
    path = tmp_path / "evaluators.pt"
    path.write_bytes(b"not a cache")
    small = data[0].subset(torch.arange(100))
    first = load_or_train_evaluators(small, path, seed=0)
    assert torch.load(path, weights_only=True)["key"] == first.key
    fewer = data[0].subset(torch.arange(99))
    second = load_or_train_evaluators(fewer, path, seed=0)
    assert second.key != first.key
    assert torch.load(path, weights_only=True)["key"] == second.key


def test_samplers_are_evaluated_through_the_protocol_like_the_module(evaluator, data, real_scores):
    assert evaluator.evaluate(FeatureSampler(RealData(data[1], data[0])), n=N, seed=0) == real_scores


def test_a_source_that_is_not_a_sampler_is_refused_by_name(evaluator, data):
    with pytest.raises(FastMMGANError, match="cannot evaluate a SampleOnly: expected a Generator or a MultimodalSampler"):
        evaluator.evaluate(SampleOnly(RealData(data[1], data[0])), n=40, seed=0)


def test_sampler_and_onnx_generator_implement_the_protocol(tiny_run):
    export = pytest.importorskip("fastmmgan.export")
    sampler = load_generator(tiny_run)
    onnx_gen = export.OnnxGenerator(export.export_generator(tiny_run, tiny_run / "protocol.onnx").path, device="cpu")
    assert isinstance(sampler, MultimodalSampler) and isinstance(onnx_gen, MultimodalSampler)
    xs, mask, _ = encode_conditions(sampler.modalities, 4, {"text": "seven"})
    z = draw_noise(4, sampler.z_dim, 3)
    for a, b in zip(sampler.generate(z, xs, mask), onnx_gen.generate(z, xs, mask), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unlabelled_data_gets_distances_in_a_pca_space(data):
    train, test = (MultimodalDataset(d.specs, d.features, d.mask) for d in data)
    evaluator = Evaluator.build(train, test)
    scores = evaluator.evaluate(RealData(test, train), n=N, seed=0)
    assert not any(key.startswith(("acc/", "coverage", "class_ratio/")) for key in scores)
    assert scores["fid"] < 1.5 * scores["fid_floor"] and scores["recall"] > 0.8
    collapsed = evaluator.evaluate(RealData(test, train, collapse=True), n=N, seed=0)
    assert collapsed["recall"] < 0.05 and collapsed["fid"] > 10 * scores["fid_floor"]


def test_an_untrained_generator_scores_badly(evaluator, data):
    torch.manual_seed(0)
    scores = evaluator.evaluate(Generator(data[0].specs, z_dim=8, width=32, depth=1), n=N, seed=0)
    assert scores["acc/text_to_image"] < 0.5
    assert scores["fid"] > 5 * scores["fid_floor"]


def test_frechet_distance_of_known_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=gen)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + torch.tensor([3.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(9.0, rel=1e-6)
    wide = 2 * torch.randn(4000, 3, generator=gen)
    assert frechet_distance(a, wide) == pytest.approx(3 * (1 + 4 - 2 * 2), rel=0.1)


def test_precision_recall_on_toy_gaussians():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(1000, 2, generator=gen)
    same = torch.randn(1000, 2, generator=gen)
    narrow = 0.2 * torch.randn(1000, 2, generator=gen)
    wide = 8.0 * torch.randn(1000, 2, generator=gen)
    far = torch.randn(1000, 2, generator=gen) + 20.0
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(real, narrow)
    assert p > 0.95 and r < 0.3
    p, r = precision_recall(real, wide)
    assert p < 0.3 and r > 0.9
    assert precision_recall(real, far) == (0.0, 0.0)


def test_bad_input_is_a_clear_error(evaluator, data):
    with pytest.raises(FastMMGANError, match="cannot evaluate"):
        evaluator.evaluate(object(), n=10)
    with pytest.raises(FastMMGANError, match="n must be"):
        evaluator.evaluate(RealData(data[1], data[0]), n=1)
    other = Generator(data[0].specs[:2], z_dim=4, width=16, depth=1)
    with pytest.raises(FastMMGANError, match="do not match"):
        evaluator.evaluate(other, n=10)
    with pytest.raises(FastMMGANError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache):
    from fastmmgan import train

    out = tmp_path_factory.mktemp("tiny")
    args = ["--steps", "2", "--batch-size", "16", "--g-width", "16", "--d-width", "16", "--z-dim", "4",
            "--sample-every", "0", "--log-every", "0", "--no-compile", "--no-progress", "--out", str(out)]
    assert train.main(args) == 0
    (out / "evaluators.pt").write_bytes(cache.read_bytes())
    return out


def test_cli_prints_a_table_and_json(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main([str(tiny_run), "--n", "50"]))
    assert exit_info.value.code == 0
    table = capsys.readouterr().out
    assert "text -> image" in table and "Frechet" in table and "coverage" in table
    with pytest.raises(SystemExit):
        run_cli(lambda: evaluate.main([str(tiny_run / "checkpoints" / "last.pt"), "--n", "50", "--json"]))
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 50 and 0.0 <= report["metrics"]["acc/text_to_image"] <= 1.0
    assert set(report["missing_classes"]) == {"image", "text", "audio"}


def test_cli_evaluates_an_exported_onnx_file_like_its_checkpoint(tiny_run, capsys):
    export = pytest.importorskip("fastmmgan.export")
    onnx_path = tiny_run / "generator.onnx"
    export.export_generator(tiny_run, onnx_path)
    reports = []
    for model in (tiny_run, onnx_path):
        with pytest.raises(SystemExit):
            run_cli(lambda model=model: evaluate.main([str(model), "--n", "50", "--json"]))
        reports.append(json.loads(capsys.readouterr().out)["metrics"])
    torch_metrics, onnx_metrics = reports
    assert onnx_metrics.keys() == torch_metrics.keys()
    for key, value in torch_metrics.items():
        assert onnx_metrics[key] == pytest.approx(value, rel=1e-3, abs=0.03), key


def test_cli_refuses_a_checkpoint_whose_generator_does_not_load(tiny_run, tmp_path, capsys):
    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    state["ema"] = {"weight": torch.zeros(1)}
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main([str(tmp_path / "broken.pt")]))
    assert exit_info.value.code == 2
    assert "does not describe a loadable generator" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/run"], "checkpoint not found"),
    (["{run}", "--n", "1"], "--n must be"),
    (["/nonexistent/model.onnx"], "not found"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_run, capsys, argv, message):
    argv = [a.format(run=tiny_run) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_rgb_images_are_scored_like_grey_ones(data, tmp_path, monkeypatch):
    """The evaluators work on flat features, so RGB images ([8, 8, 3] here: the digits tinted) get the same
    metrics as grey ones: real data scores near the floor, an untrained generator far from it, and the cached
    evaluators (keyed apart from the grey ones) load for the RGB spec without retraining."""
    rgb_spec = ModalitySpec("image", "image", image_shape=(8, 8), channels=3)

    def tinted(ds):
        grey = ds.features[0].view(-1, 8, 8)
        rgb = torch.stack([grey, grey**2, 1 - grey], dim=-1).reshape(len(grey), -1)
        return MultimodalDataset((rgb_spec, *ds.specs[1:]), (rgb, *ds.features[1:]), ds.mask, ds.labels)

    train, test = tinted(data[0]), tinted(data[1])
    assert cache_key(train, 0) != cache_key(data[0], 0)
    load_or_train_evaluators(train, tmp_path / "evaluators.pt", seed=0)
    monkeypatch.setattr(evaluator_nets, "train_evaluators", lambda *args: pytest.fail("the cache was not used"))
    evaluator = Evaluator.build(train, test, cache_path=tmp_path / "evaluators.pt", seed=0)
    scores = evaluator.evaluate(RealData(test, train), n=200, seed=0)
    assert scores["acc/text_to_image"] > 0.9 and scores["acc/image_to_text"] > 0.9
    assert scores["fid"] < 1.5 * scores["fid_floor"] and scores["recall"] > 0.8
    untrained = evaluator.evaluate(Generator(train.specs, z_dim=8, width=32, depth=1), n=200, seed=0)
    assert untrained["acc/text_to_image"] < 0.5 and untrained["fid"] > 5 * untrained["fid_floor"]
