"""The evaluator networks a generator is scored with, trained on the real train split and cached beside the run.

No downloaded weights: one small MLP classifier per modality (features -> label) is trained on the real train
split only, deterministically on the CPU, and cached (keyed by the split's content, specs, seed and recipe).
Its penultimate layer is the feature space of the distances. Datasets without labels get a PCA space fitted
on the train split instead. We train our own rather than use an ImageNet Inception: the modalities here are
small feature vectors of any kind (image, text, audio), and nothing may be downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write
from .data import MultimodalDataset
from .errors import FastMMGANError
from .feature_store import digest_into
from .modalities import ModalitySpec

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


class EvaluatorNets:
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
    def from_state(cls, specs: Sequence[ModalitySpec], state: Mapping[str, Any]) -> EvaluatorNets:
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
    digest_into(h, (*train_ds.features, train_ds.mask, *(() if train_ds.labels is None else (train_ds.labels,))))
    return h.hexdigest()[:16]


def _train_classifier(x: torch.Tensor, targets: torch.Tensor, classes: int, seed: int) -> Classifier:
    """Full-batch Adam on cross-entropy, inputs jittered by Gaussian noise so blurry generated samples still
    land on the right side; stops early once the jittered train loss is under STOP_LOSS (easy modalities such
    as captions and keypad tones fit in a few dozen steps). Deterministic: init and noise come from ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Classifier(x.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(TRAIN_STEPS):
        noisy = x + INPUT_NOISE * torch.randn(x.shape, generator=rng)
        loss = nn.functional.cross_entropy(net(noisy), targets)
        if loss.item() < STOP_LOSS:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one CPU thread, then restore: evaluators and metrics come out bit-identical whatever the host's
    thread count, and these small matrix products gain nothing from threads (on a busy 2-core CPU,
    two threads took 8x the CPU time of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_evaluators(train_ds: MultimodalDataset, seed: int = 0) -> EvaluatorNets:
    """One classifier per modality on the rows where it is present (PCA embeddings when there are no labels)."""
    with one_thread():
        return _train_evaluators(train_ds, seed)


def _train_evaluators(train_ds: MultimodalDataset, seed: int) -> EvaluatorNets:
    key = cache_key(train_ds, seed)
    nets: dict[str, nn.Module] = {}
    if train_ds.labels is None:
        for m, spec in enumerate(train_ds.specs):
            nets[spec.name] = PcaEmbedding.fit(train_ds.features[m][train_ds.mask[:, m]].float())
        return EvaluatorNets(train_ds.specs, nets, None, key)
    classes = torch.unique(train_ds.labels)
    if len(classes) < 2:
        raise FastMMGANError(f"the train split has {len(classes)} label value(s); a classifier needs at least 2")
    targets = torch.searchsorted(classes, train_ds.labels)
    for m, spec in enumerate(train_ds.specs):
        rows = train_ds.mask[:, m]
        if not bool(rows.any()):
            raise FastMMGANError(f"modality {spec.name!r} is absent from every train sample")
        nets[spec.name] = _train_classifier(train_ds.features[m][rows].float(), targets[rows], len(classes), seed + m)
    return EvaluatorNets(train_ds.specs, nets, classes, key)


def _read_cache(path: Path, specs: Sequence[ModalitySpec], key: str) -> EvaluatorNets | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT or state.get("key") != key:
            return None
        return EvaluatorNets.from_state(specs, state)
    except Exception:  # noqa: BLE001 - a cache that cannot be read for any reason is rebuilt
        return None


def load_or_train_evaluators(train_ds: MultimodalDataset, cache_path: str | Path | None = None,
                             seed: int = 0) -> EvaluatorNets:
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
