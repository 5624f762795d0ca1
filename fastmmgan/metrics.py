"""Offline quality metrics: evaluator networks trained on the real train split, and what they say about a generator.

No downloaded weights: one small MLP classifier per modality (features -> label) is trained on the real train
split only, deterministically on the CPU, and cached beside the run. What it measures:

- ``acc/A_to_B``: share of samples generated from a test-split condition A whose B is classified as A's label;
- ``agreement``: share of samples generated from noise whose modalities all get the same label;
- ``coverage``: share of classes generated from noise at no less than a quarter of their real rate (worst modality);
- ``fid``: Frechet distance in the classifier's penultimate-layer space between generated and real test samples,
  next to ``fid_floor``, the same distance between real train and real test samples;
- ``precision`` / ``recall``: improved precision and recall (k-NN radii, Kynkaanniemi et al. 2019) in that space.

Datasets without labels get distances only, in a PCA space fitted on the train split.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write
from .data import MultimodalDataset
from .errors import FastMMGANError
from .modalities import ModalitySpec
from .sampler import draw_noise

CACHE_NAME = "evaluators.pt"
FORMAT = "fastmmgan-evaluators"
VERSION = 1
HIDDEN = 128
FEATURES = 64
TRAIN_STEPS = 150
LR = 3e-3
WEIGHT_DECAY = 1e-4
INPUT_NOISE = 0.1
STOP_LOSS = 0.02
COVERED_RATIO = 0.25
DEFAULT_K = 3

FeatureFn = Callable[[Mapping[str, torch.Tensor], int, int], list[torch.Tensor]]


class Classifier(nn.Module):
    """An MLP: features [B, dim] -> logits [B, classes]; :meth:`embed` is its penultimate layer [B, FEATURES]."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, FEATURES), nn.ReLU())
        self.out = nn.Linear(FEATURES, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class PcaEmbedding(nn.Module):
    """Projection onto the top principal components of the train split: [B, dim] -> [B, k]."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)

    @classmethod
    def fit(cls, x: torch.Tensor, k: int = FEATURES) -> PcaEmbedding:
        mean = x.mean(dim=0)
        _, _, vh = torch.linalg.svd((x - mean).double(), full_matrices=False)
        return cls(mean, vh[: min(k, vh.shape[0])].float())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T


class Evaluators:
    """The evaluator of every modality, trained on one train split; ``classes`` are its label values (sorted)."""

    def __init__(self, specs: Sequence[ModalitySpec], nets: Mapping[str, nn.Module], classes: torch.Tensor | None,
                 key: str) -> None:
        self.specs = tuple(specs)
        self.nets = dict(nets)
        self.classes = classes
        self.key = key

    @property
    def labelled(self) -> bool:
        return self.classes is not None

    @torch.no_grad()
    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Features [n, dim_m] of modality ``name`` -> evaluator features [n, f] float32."""
        return self.nets[name].embed(x.float())

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Features [n, dim_m] -> predicted label values [n] (int64)."""
        if self.classes is None:
            raise FastMMGANError("this dataset has no labels, so there is no classifier to predict with")
        return self.classes[self.nets[name](x.float()).argmax(dim=1)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "key": self.key,
            "classes": self.classes,
            "nets": {name: net.state_dict() for name, net in self.nets.items()},
        }

    @classmethod
    def from_state(cls, specs: Sequence[ModalitySpec], state: Mapping[str, Any]) -> Evaluators:
        classes = state["classes"]
        nets: dict[str, nn.Module] = {}
        for spec in specs:
            weights = state["nets"][spec.name]
            if classes is None:
                nets[spec.name] = PcaEmbedding(weights["mean"], weights["components"])
            else:
                net = Classifier(spec.dim, len(classes))
                net.load_state_dict(weights)
                nets[spec.name] = net.eval()
        return cls(specs, nets, classes, state["key"])


def cache_key(train_ds: MultimodalDataset, seed: int) -> str:
    """Hash of everything the evaluators depend on: the train split's content, specs, seed and recipe."""
    h = hashlib.sha256()
    recipe = [VERSION, seed, HIDDEN, FEATURES, TRAIN_STEPS, LR, WEIGHT_DECAY, INPUT_NOISE, STOP_LOSS]
    h.update(json.dumps({"recipe": recipe, "specs": [s.to_dict() for s in train_ds.specs]}, sort_keys=True).encode())
    for t in (*train_ds.features, train_ds.mask, *(() if train_ds.labels is None else (train_ds.labels,))):
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _train_classifier(x: torch.Tensor, targets: torch.Tensor, classes: int, seed: int) -> Classifier:
    """Full-batch Adam on cross-entropy, inputs jittered by Gaussian noise so blurry generated samples still
    land on the right side; stops early once the jittered train loss is under STOP_LOSS (easy modalities such
    as captions and keypad tones fit in a few dozen steps). Deterministic: init and noise come from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Classifier(x.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(TRAIN_STEPS):
        noisy = x + INPUT_NOISE * torch.randn(x.shape, generator=gen)
        loss = nn.functional.cross_entropy(net(noisy), targets)
        if loss.item() < STOP_LOSS:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one CPU thread, then restore: evaluators and metrics come out bit-identical whatever the host's
    thread count, and these small matrix products gain nothing from threads (on a loaded 2-core machine,
    two threads took 8x the CPU time of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_evaluators(train_ds: MultimodalDataset, seed: int = 0) -> Evaluators:
    """One classifier per modality on the rows where it is present (PCA embeddings when there are no labels)."""
    with _one_thread():
        return _train_evaluators(train_ds, seed)


def _train_evaluators(train_ds: MultimodalDataset, seed: int) -> Evaluators:
    key = cache_key(train_ds, seed)
    nets: dict[str, nn.Module] = {}
    if train_ds.labels is None:
        for m, spec in enumerate(train_ds.specs):
            nets[spec.name] = PcaEmbedding.fit(train_ds.features[m][train_ds.mask[:, m]].float())
        return Evaluators(train_ds.specs, nets, None, key)
    classes = torch.unique(train_ds.labels)
    if len(classes) < 2:
        raise FastMMGANError(f"the train split has {len(classes)} label value(s); a classifier needs at least 2")
    targets = torch.searchsorted(classes, train_ds.labels)
    for m, spec in enumerate(train_ds.specs):
        rows = train_ds.mask[:, m]
        if not bool(rows.any()):
            raise FastMMGANError(f"modality {spec.name!r} is absent from every train sample")
        nets[spec.name] = _train_classifier(train_ds.features[m][rows].float(), targets[rows], len(classes), seed + m)
    return Evaluators(train_ds.specs, nets, classes, key)


def _read_cache(path: Path, specs: Sequence[ModalitySpec], key: str) -> Evaluators | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT or state.get("key") != key:
            return None
        return Evaluators.from_state(specs, state)
    except Exception:  # noqa: BLE001 - a cache that cannot be read for any reason is rebuilt
        return None


def load_or_train_evaluators(train_ds: MultimodalDataset, cache_path: str | Path | None = None,
                             seed: int = 0) -> Evaluators:
    """The evaluators from ``cache_path`` when it was built from this very train split and seed; otherwise
    train them and write the cache atomically (a cache that cannot be written is skipped with a warning)."""
    key = cache_key(train_ds, seed)
    path = None if cache_path is None else Path(cache_path)
    if path is not None and path.is_file():
        cached = _read_cache(path, train_ds.specs, key)
        if cached is not None:
            return cached
    evaluators = train_evaluators(train_ds, seed)
    if path is not None:
        try:
            atomic_write(path, lambda f: torch.save(evaluators.state_dict(), f))
        except OSError as e:
            warnings.warn(f"could not cache the evaluators in {path}: {e}", stacklevel=2)
    return evaluators


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to a [n, f] and b [m, f] (n, m >= 2), in float64:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``."""
    if len(a) < 2 or len(b) < 2:
        raise FastMMGANError(f"the Frechet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (a.mean(dim=0) - b.mean(dim=0)).square().sum()
    return max(0.0, float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross))


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def knn_radii(x: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Distance of each row of x [n, f] to its k-th nearest other row: [n]."""
    if len(x) <= k:
        raise FastMMGANError(f"k-NN radii with k={k} need more than {k} samples, got {len(x)}")
    return torch.cdist(x.double(), x.double()).kthvalue(k + 1, dim=1).values


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    inside = torch.cdist(points.double(), centres.double()) <= radii[None, :]
    return float(inside.any(dim=1).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K) -> tuple[float, float]:
    """Improved precision (share of fake [n, f] inside the real manifold) and recall (share of real [m, f] inside
    the fake manifold); a manifold is the union of balls reaching each sample's k-th nearest neighbour."""
    precision = _share_inside(fake, real, knn_radii(real, k))
    recall = _share_inside(real, fake, knn_radii(fake, k))
    return precision, recall


def _is_torch_generator(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, "specs") and hasattr(obj, "z_dim")


def _torch_feature_fn(gen: Any) -> FeatureFn:
    specs = tuple(gen.specs)

    def run(given: Mapping[str, torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
        params = list(gen.parameters()) if isinstance(gen, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
        xs = [given[s.name] if s.name in given else torch.zeros(n, s.dim) for s in specs]
        mask = torch.tensor([[s.name in given for s in specs]]).expand(n, -1)
        z = draw_noise(n, gen.z_dim, seed)
        was_training = bool(getattr(gen, "training", False))
        if isinstance(gen, nn.Module):
            gen.eval()
        try:
            with torch.no_grad():
                out = gen(z.to(device), [x.to(device) for x in xs], mask.to(device))
        finally:
            if isinstance(gen, nn.Module):
                gen.train(was_training)
        return [o.float().cpu() for o in out]

    return run


def _array_feature_fn(source: Any) -> FeatureFn:
    """Sources with a feature-level ``run(z, xs, mask)`` on numpy arrays (the ONNX wrapper): exact conditions,
    the same noise as the PyTorch path for the same seed."""
    specs = tuple(source.modalities)

    def run(given: Mapping[str, torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
        xs = [(given[s.name] if s.name in given else torch.zeros(n, s.dim)).numpy() for s in specs]
        mask = np.tile(np.array([[s.name in given for s in specs]], dtype=np.float32), (n, 1))
        z = draw_noise(n, source.z_dim, seed).numpy()
        return [torch.as_tensor(np.asarray(o, dtype=np.float32)) for o in source.run(z, xs, mask)]

    return run


def _raw_feature_fn(source: Any) -> FeatureFn:
    """Sources that only take raw conditions: conditions are decoded from test features (audio by fast Griffin-Lim,
    so slightly lossy) and raw outputs, when that is all there is, encoded back into features."""
    specs = tuple(source.modalities)

    def run(given: Mapping[str, torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
        raw = {s.name: _decode_rows(s, given[s.name]) for s in specs if s.name in given}
        if hasattr(source, "sample_features"):
            feats, _ = source.sample_features(n, raw, seed)
            return [torch.as_tensor(f).float().cpu() for f in feats]
        out = source.sample(n, raw, seed)
        return [_encode_output(s, out[s.name]) for s in specs]

    return run


def _decode_rows(spec: ModalitySpec, features: torch.Tensor) -> Any:
    """Raw conditions for features [n, dim], decoding each distinct row once (conditions repeat)."""
    unique, inverse = torch.unique(features, dim=0, return_inverse=True)
    raw = spec.decode(unique)
    if isinstance(raw, list):
        return [raw[i] for i in inverse.tolist()]
    return raw[inverse.numpy()]


def _encode_output(spec: ModalitySpec, value: Any) -> torch.Tensor:
    if spec.kind == "image":
        value = np.clip(np.asarray(value, dtype=np.float32), 0.0, 1.0)
    return spec.encode(value)


def feature_source(source: Any) -> tuple[tuple[ModalitySpec, ...], FeatureFn]:
    """Specs and a ``(given features by name, n, seed) -> features per modality`` function for anything that
    generates, best path first: a :class:`~fastmmgan.models.Generator` (or a :class:`~fastmmgan.sampler.Sampler`
    holding one); an object with ``.modalities``, ``.z_dim`` and ``.run(z, xs, mask)`` on numpy arrays
    (``fastmmgan.export.OnnxGenerator``); an object with ``.modalities`` and ``.sample_features(n, given, seed)``
    or ``.sample(n, given, seed)`` taking raw conditions."""
    if _is_torch_generator(source):
        return tuple(source.specs), _torch_feature_fn(source)
    inner = getattr(source, "generator", None)
    if _is_torch_generator(inner):
        return tuple(inner.specs), _torch_feature_fn(inner)
    if hasattr(source, "modalities"):
        if hasattr(source, "z_dim") and callable(getattr(source, "run", None)):
            return tuple(source.modalities), _array_feature_fn(source)
        if hasattr(source, "sample_features") or hasattr(source, "sample"):
            return tuple(source.modalities), _raw_feature_fn(source)
    raise FastMMGANError(f"cannot evaluate a {type(source).__name__}: expected a Generator, a Sampler or an object "
                         "with .modalities and .sample(n, given, seed)")


def _check_specs(specs: Sequence[ModalitySpec], data_specs: Sequence[ModalitySpec]) -> None:
    mine = [(s.name, s.kind, s.dim) for s in specs]
    data = [(s.name, s.kind, s.dim) for s in data_specs]
    if mine != data:
        raise FastMMGANError(f"the generator's modalities {mine} do not match the dataset's {data}")


def _condition_rows(rows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n row indices cycling through ``rows`` in a seeded order (each condition used about n/len(rows) times)."""
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows[perm[torch.arange(n) % len(rows)]]


def _seeded_subset(n_rows: int, size: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:size]


class Evaluator:
    """Scores generators against one dataset split. Build it once (it trains or loads the evaluators and
    embeds the real data), then call :meth:`evaluate` as often as needed."""

    def __init__(self, train_ds: MultimodalDataset, test_ds: MultimodalDataset, evaluators: Evaluators) -> None:
        _check_specs(evaluators.specs, test_ds.specs)
        self.train_ds, self.test_ds, self.evaluators = train_ds, test_ds, evaluators
        self.specs = evaluators.specs
        self._test_embed = {s.name: self._embed_present(test_ds, m) for m, s in enumerate(self.specs)}
        self._train_embed = {s.name: self._embed_present(train_ds, m) for m, s in enumerate(self.specs)}
        self._floors: dict[tuple[int, int, int], dict[str, float]] = {}

    @classmethod
    def build(cls, train_ds: MultimodalDataset, test_ds: MultimodalDataset, cache_path: str | Path | None = None,
              seed: int = 0) -> Evaluator:
        """Evaluators from ``cache_path`` (or trained with ``seed`` and cached there) for these splits."""
        return cls(train_ds, test_ds, load_or_train_evaluators(train_ds, cache_path, seed))

    def _embed_present(self, ds: MultimodalDataset, m: int) -> torch.Tensor:
        return self.evaluators.embed(self.specs[m].name, ds.features[m][ds.mask[:, m]])

    def real_accuracy(self) -> dict[str, float]:
        """Each classifier's accuracy on the real test split: the ceiling of the conditional accuracies."""
        if not self.evaluators.labelled or self.test_ds.labels is None:
            return {}
        out = {}
        for m, spec in enumerate(self.specs):
            rows = self.test_ds.mask[:, m]
            pred = self.evaluators.predict(spec.name, self.test_ds.features[m][rows])
            out[f"evaluator_acc/{spec.name}"] = float((pred == self.test_ds.labels[rows]).double().mean())
        return out

    def evaluate(self, source: Any, n: int = 1000, seed: int = 0, k: int = DEFAULT_K) -> dict[str, float]:
        """Every metric for ``source`` (see :func:`feature_source`) from ``n`` samples per direction (conditions
        cycle through the test split), as flat keys: ``acc/A_to_B``, ``evaluator_acc/<name>``, ``agreement``,
        ``coverage`` (worst modality), ``coverage/<name>``, ``class_ratio/<name>/<label>``; ``fid``, ``fid_floor``,
        ``fid_ratio``, ``precision``, ``recall`` (+ ``_floor``) for the primary modality and ``fid/<name>`` etc.
        for each. Runs on one CPU thread (the generator stays on its device); ``seed`` fixes noise and order."""
        if not isinstance(n, int) or n < 2:
            raise FastMMGANError(f"n must be an integer >= 2, got {n!r}")
        specs, generate = feature_source(source)
        _check_specs(specs, self.specs)
        with _one_thread():
            return self._evaluate(generate, n, seed, k)

    def _evaluate(self, generate: FeatureFn, n: int, seed: int, k: int) -> dict[str, float]:
        metrics = self.real_accuracy()
        if self.evaluators.labelled and self.test_ds.labels is not None:
            metrics.update(self._conditional(generate, n, seed))
        uncond = generate({}, n, seed)
        if self.evaluators.labelled:
            metrics.update(self._classes_from_noise(uncond))
        metrics.update(self._distances(uncond, n, seed, k))
        return metrics

    def _conditional(self, generate: FeatureFn, n: int, seed: int) -> dict[str, float]:
        out = {}
        for a, src in enumerate(self.specs):
            rows = torch.nonzero(self.test_ds.mask[:, a]).flatten()
            if len(rows) == 0:
                continue
            idx = _condition_rows(rows, n, seed + 1 + a)
            fake = generate({src.name: self.test_ds.features[a][idx]}, n, seed + 1 + a)
            labels = self.test_ds.labels[idx]
            for b, dst in enumerate(self.specs):
                if b != a:
                    pred = self.evaluators.predict(dst.name, fake[b])
                    out[f"acc/{src.name}_to_{dst.name}"] = float((pred == labels).double().mean())
        return out

    def _classes_from_noise(self, fake: Sequence[torch.Tensor]) -> dict[str, float]:
        classes = self.evaluators.classes
        preds = torch.stack([self.evaluators.predict(s.name, f) for s, f in zip(self.specs, fake, strict=True)])
        out = {"agreement": float((preds == preds[:1]).all(dim=0).double().mean())}
        real_share = (self.train_ds.labels[:, None] == classes[None]).double().mean(dim=0)
        for spec, pred in zip(self.specs, preds, strict=True):
            share = (pred[:, None] == classes[None]).double().mean(dim=0)
            ratio = share / real_share
            out[f"coverage/{spec.name}"] = float((ratio >= COVERED_RATIO).double().mean())
            out.update({f"class_ratio/{spec.name}/{int(c)}": float(r) for c, r in zip(classes, ratio, strict=True)})
        out["coverage"] = min(out[f"coverage/{s.name}"] for s in self.specs)
        return out

    def _distances(self, fake: Sequence[torch.Tensor], n: int, seed: int, k: int) -> dict[str, float]:
        out: dict[str, float] = {}
        floors = self._floor(n, seed, k)
        for spec, feats in zip(self.specs, fake, strict=True):
            real = self._test_embed[spec.name]
            gen = self.evaluators.embed(spec.name, feats)
            m = min(len(gen), len(real))
            precision, recall = precision_recall(real[:m], gen[:m], k)
            out[f"fid/{spec.name}"] = frechet_distance(gen, real)
            out[f"precision/{spec.name}"] = precision
            out[f"recall/{spec.name}"] = recall
            for key in ("fid_floor", "precision_floor", "recall_floor"):
                out[f"{key}/{spec.name}"] = floors[f"{key}/{spec.name}"]
        primary = self.primary.name
        for key in ("fid", "fid_floor", "precision", "recall", "precision_floor", "recall_floor"):
            out[key] = out[f"{key}/{primary}"]
        out["fid_ratio"] = out["fid"] / out["fid_floor"] if out["fid_floor"] > 0 else float("inf")
        return out

    def _floor(self, n: int, seed: int, k: int) -> dict[str, float]:
        """The same distances for a seeded subset of real train samples (as many as generated) vs real test."""
        if (n, seed, k) not in self._floors:
            out = {}
            for spec in self.specs:
                real, train = self._test_embed[spec.name], self._train_embed[spec.name]
                sub = train[_seeded_subset(len(train), min(n, len(train)), seed)]
                m = min(len(sub), len(real))
                out[f"fid_floor/{spec.name}"] = frechet_distance(sub, real)
                out[f"precision_floor/{spec.name}"], out[f"recall_floor/{spec.name}"] = precision_recall(
                    real[:m], sub[:m], k)
            self._floors[(n, seed, k)] = out
        return self._floors[(n, seed, k)]

    @property
    def primary(self) -> ModalitySpec:
        """The modality the headline distances use: the first image modality, else the first one."""
        return next((s for s in self.specs if s.kind == "image"), self.specs[0])


def missing_classes(metrics: Mapping[str, float], name: str) -> list[int]:
    """Labels that modality ``name`` generated from noise at under COVERED_RATIO of their real rate."""
    prefix = f"class_ratio/{name}/"
    return [int(key[len(prefix):]) for key, value in metrics.items()
            if key.startswith(prefix) and value < COVERED_RATIO]


def evaluate_generator(source: Any, train_ds: MultimodalDataset, test_ds: MultimodalDataset,
                       cache_path: str | Path | None = None, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """One-call evaluation (builds an :class:`Evaluator`; keep one around to evaluate repeatedly)."""
    return Evaluator.build(train_ds, test_ds, cache_path, seed).evaluate(source, n=n, seed=seed)
