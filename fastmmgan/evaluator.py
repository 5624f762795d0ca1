"""Scoring a generator against one dataset split with the evaluator networks.

What :meth:`Evaluator.evaluate` reports:

- ``acc/A_to_B``: share of samples generated from a test-split condition A whose B is classified as A's label;
- conditional diversity of each direction: ``spread/A_to_B``, the distance between samples of one condition
  over the real within-class distance (in feature space, and ``spread_embed`` in the evaluator's), per-class
  ``cond_recall`` against its real floor, and for text the distinct captions per condition (``distinct``);
- ``agreement``: share of samples generated from noise whose modalities all get the same label;
- ``coverage``: share of classes generated from noise at no less than a quarter of their real rate (worst modality);
- ``fid``: Frechet distance in the classifier's penultimate-layer space between generated and real test samples,
  next to ``fid_floor``, the same distance between real train and real test samples;
- ``precision`` / ``recall``: improved precision and recall (k-NN radii, Kynkaanniemi et al. 2019) in that space.

Datasets without labels get distances only, in a PCA space fitted on the train split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .colour_check import caption_colour, ink_colour, is_colour_image, names_colours
from .data import MultimodalDataset
from .errors import FastMMGANError
from .evaluator_nets import EvaluatorNets, load_or_train_evaluators, one_thread
from .metrics import DEFAULT_K, frechet_distance, precision_recall
from .modalities import ModalitySpec
from .sampler import draw_noise
from .sampler_protocol import MultimodalSampler

COVERED_RATIO = 0.25
MAX_ROWS = 20_000
"""Rows of each split the evaluator reads at most (a seeded subset of a larger split)."""
MAX_CLASS_ROWS = 2_000
"""Real rows per class at most in the within-class spread (its pairwise distances are quadratic in them)."""
PER_CONDITION = 8
"""Noise draws per condition for the conditional-diversity metrics (the sample sheets show as many)."""

FeatureFn = Callable[[Mapping[str, torch.Tensor], int, int], list[torch.Tensor]]


def _is_generator_module(obj: Any) -> bool:
    """A :class:`~fastmmgan.models.Generator`, or anything called like one: ``obj(z, xs, mask)`` with ``.specs``
    and ``.z_dim``."""
    return callable(obj) and isinstance(getattr(obj, "specs", None), Sequence) and isinstance(getattr(obj, "z_dim", None), int)


def _module_feature_fn(generator: Any) -> FeatureFn:
    """Runs a generator module in eval mode on its own device, restoring its training flag afterwards."""
    specs = tuple(generator.specs)

    def run(given: Mapping[str, torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
        params = list(generator.parameters()) if isinstance(generator, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
        xs, mask = _condition_inputs(specs, given, n)
        z = draw_noise(n, generator.z_dim, seed)
        was_training = bool(getattr(generator, "training", False))
        if isinstance(generator, nn.Module):
            generator.eval()
        try:
            with torch.no_grad():
                out = generator(z.to(device), [x.to(device) for x in xs], mask.to(device))
        finally:
            if isinstance(generator, nn.Module):
                generator.train(was_training)
        return [o.float().cpu() for o in out]

    return run


def _sampler_feature_fn(sampler: MultimodalSampler) -> FeatureFn:
    """Exact condition features through :meth:`MultimodalSampler.generate`, the same noise as the module path."""
    specs = tuple(sampler.modalities)

    def run(given: Mapping[str, torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
        xs, mask = _condition_inputs(specs, given, n)
        return [o.float().cpu() for o in sampler.generate(draw_noise(n, sampler.z_dim, seed), xs, mask)]

    return run


def _condition_inputs(specs: Sequence[ModalitySpec], given: Mapping[str, torch.Tensor], n: int) -> tuple[list, torch.Tensor]:
    """Condition features (zeros where not given) and the [n, M] bool mask for features given by name."""
    xs = [given[s.name] if s.name in given else torch.zeros(n, s.dim) for s in specs]
    return xs, torch.tensor([[s.name in given for s in specs]]).expand(n, -1)


def feature_source(source: Any) -> tuple[tuple[ModalitySpec, ...], FeatureFn]:
    """Specs and a ``(given features by name, n, seed) -> features per modality`` function for a
    :class:`~fastmmgan.sampler_protocol.MultimodalSampler` (:class:`~fastmmgan.Sampler`,
    :class:`~fastmmgan.export.OnnxGenerator`) or a generator module (:class:`~fastmmgan.models.Generator`)."""
    if isinstance(source, MultimodalSampler):
        return tuple(source.modalities), _sampler_feature_fn(source)
    if _is_generator_module(source):
        return tuple(source.specs), _module_feature_fn(source)
    raise FastMMGANError(f"cannot evaluate a {type(source).__name__}: expected a Generator or a MultimodalSampler "
                         "(a Sampler, an OnnxGenerator, or an object with .modalities, .z_dim, .generate, "
                         ".sample_features and .sample)")


def _check_specs(specs: Sequence[ModalitySpec], data_specs: Sequence[ModalitySpec]) -> None:
    mine = [(s.name, s.kind, s.dim) for s in specs]
    data = [(s.name, s.kind, s.dim) for s in data_specs]
    if mine != data:
        raise FastMMGANError(f"the generator's modalities {mine} do not match the dataset's {data}")


def _condition_rows(rows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n row indices cycling through ``rows`` in a seeded order (each condition used about n/len(rows) times)."""
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows[perm[torch.arange(n) % len(rows)]]


def _mean_pairwise(x: torch.Tensor) -> float:
    """Mean L2 distance over the distinct pairs of rows of x [n, f] (n >= 2)."""
    d = torch.cdist(x.double(), x.double())
    return float(d.sum() / (len(x) * (len(x) - 1)))


def _spread(groups: torch.Tensor) -> float:
    """Mean over groups [g, n, f] of the mean pairwise L2 distance within each group."""
    d = torch.cdist(groups.double(), groups.double())
    n = groups.shape[1]
    return float((d.sum(dim=(1, 2)) / (n * (n - 1))).mean())


def _at_most(ds: MultimodalDataset, rows: int, seed: int) -> MultimodalDataset:
    """``ds``, or a seeded subset of ``rows`` of its rows when it has more."""
    return ds if len(ds) <= rows else ds.subset(_seeded_subset(len(ds), rows, seed).sort().values)


def _seeded_subset(n_rows: int, size: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:size]


class Evaluator:
    """Scores generators against one dataset split. Build it once (it trains or loads the evaluators and
    embeds the real data), then call :meth:`evaluate` as often as needed."""

    def __init__(self, train_ds: MultimodalDataset, test_ds: MultimodalDataset, evaluators: EvaluatorNets) -> None:
        _check_specs(evaluators.specs, test_ds.specs)
        self.train_ds, self.test_ds, self.evaluators = train_ds, test_ds, evaluators
        self.specs = evaluators.specs
        self._test_embed = {s.name: self._embed_present(test_ds, m) for m, s in enumerate(self.specs)}
        self._train_embed = {s.name: self._embed_present(train_ds, m) for m, s in enumerate(self.specs)}
        self._floors: dict[tuple[int, int, int], dict[str, float]] = {}

    @classmethod
    def build(cls, train_ds: MultimodalDataset, test_ds: MultimodalDataset, cache_path: str | Path | None = None,
              seed: int = 0) -> Evaluator:
        """Evaluator networks from ``cache_path`` (or trained with ``seed`` and cached there) for these splits,
        each cut to a seeded :data:`MAX_ROWS` rows when larger (the evaluators and the real statistics hold
        their rows in memory as float32; a prepared dataset need not fit there)."""
        train_ds, test_ds = _at_most(train_ds, MAX_ROWS, seed), _at_most(test_ds, MAX_ROWS, seed + 1)
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
        colours = self._named_colours(torch.arange(len(self.test_ds)))
        if colours is not None:  # the colour reader on real test images: the ceiling of colour_acc
            for m, spec in enumerate(self.specs):
                if is_colour_image(spec):
                    rows = self.test_ds.mask[:, m] & (colours >= 0)
                    read = ink_colour(spec, self.test_ds.features[m][rows])
                    out[f"colour_acc_real/{spec.name}"] = float((read == colours[rows]).double().mean())
        return out

    def evaluate(self, source: Any, n: int = 1000, seed: int = 0, k: int = DEFAULT_K) -> dict[str, float]:
        """Every metric for ``source`` (see :func:`feature_source`) from ``n`` samples per direction (conditions
        cycle through the test split), as flat keys: ``acc/A_to_B``, ``evaluator_acc/<name>``, the conditional
        diversity of each direction (``spread/A_to_B``, ``spread_embed/A_to_B``, ``cond_recall/A_to_B`` and its
        ``_floor``, ``distinct/A_to_B`` for text; see :meth:`_diversity`), ``agreement``,
        ``coverage`` (worst modality), ``coverage/<name>``, ``class_ratio/<name>/<label>``; ``fid``, ``fid_floor``,
        ``fid_ratio``, ``precision``, ``recall`` (+ ``_floor``) for the primary modality and ``fid/<name>`` etc.
        for each. Runs on one CPU thread (the generator stays on its device); ``seed`` fixes noise and order."""
        if not isinstance(n, int) or n < 2:
            raise FastMMGANError(f"n must be an integer >= 2, got {n!r}")
        specs, generate = feature_source(source)
        _check_specs(specs, self.specs)
        with one_thread():
            return self._evaluate(generate, n, seed, k)

    def _evaluate(self, generate: FeatureFn, n: int, seed: int, k: int) -> dict[str, float]:
        metrics = self.real_accuracy()
        if self.evaluators.labelled and self.test_ds.labels is not None:
            metrics.update(self._conditional(generate, n, seed))
            metrics.update(self._diversity(generate, n, seed, k))
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
            colours = self._named_colours(idx)
            for b, dst in enumerate(self.specs):
                if b != a:
                    pred = self.evaluators.predict(dst.name, fake[b])
                    key = f"{src.name}_to_{dst.name}"
                    out[f"acc/{key}"] = float((pred == labels).double().mean())
                    out.update(self._colour_scores(key, src, dst, fake[b], colours, pred == labels))
        return out

    def _named_colours(self, idx: torch.Tensor, ds: MultimodalDataset | None = None) -> torch.Tensor | None:
        """The palette colour the caption of each row ``idx`` of ``ds`` (default: the test split) names ([n]
        int64, -1 none), for datasets whose captions name colours and that have a colour image (None otherwise)."""
        text = next((m for m, s in enumerate(self.specs) if names_colours(s)), None)
        has_colour_image = any(is_colour_image(s) for s in self.specs)
        if text is None or not has_colour_image:
            return None
        return caption_colour(self.specs[text], (self.test_ds if ds is None else ds).features[text][idx])

    @functools.cached_property
    def _train_colours(self) -> torch.Tensor | None:
        """The colour each training row's caption names (see :meth:`_named_colours`), read once."""
        return self._named_colours(torch.arange(len(self.train_ds)), self.train_ds)

    def _pins_colour(self, spec: ModalitySpec) -> bool:
        """Whether a condition of this modality fixes the colour (a caption naming it, or a colour image)."""
        return names_colours(spec) or is_colour_image(spec)

    def _colour_scores(self, key: str, src: ModalitySpec, dst: ModalitySpec, fake: torch.Tensor,
                       colours: torch.Tensor | None, label_ok: torch.Tensor) -> dict[str, float]:
        """``colour_acc/A_to_B``: share of samples whose colour (the image's ink, the caption's colour word) is the
        one the condition row's caption names, and ``both_acc/A_to_B``: colour and label right together. For
        text -> colour image (the caption sets the colour) and colour image -> text (the caption must say it)."""
        if colours is None:
            return {}
        if src.kind == "text" and is_colour_image(dst):
            made = ink_colour(dst, fake)
        elif is_colour_image(src) and names_colours(dst):
            made = caption_colour(dst, fake)
        else:
            return {}
        known = colours >= 0
        if not bool(known.any()):
            return {}
        right = (made == colours)[known]
        return {f"colour_acc/{key}": float(right.double().mean()),
                f"both_acc/{key}": float((right & label_ok[known]).double().mean())}

    def _diversity(self, generate: FeatureFn, n: int, seed: int, k: int) -> dict[str, float]:
        """How much conditional samples vary, per direction A -> B, from ``n // PER_CONDITION`` test conditions
        with ``PER_CONDITION`` noise draws each:

        - ``spread/A_to_B``: mean pairwise L2 distance between the samples of one condition, over the same
          statistic for real B samples of the condition's class (1.0: as varied as the data; 0: one sample
          per condition), in feature space (pixels for images); ``spread_embed/A_to_B`` in the evaluator's;
        - ``cond_recall/A_to_B``: improved recall per class (the share of real test samples of the class inside
          the k-NN balls of the samples generated for it), averaged over classes, and ``cond_recall_floor/A_to_B``,
          the same for real train samples in place of generated ones;
        - for text outputs, ``distinct/A_to_B``: distinct decoded captions per condition, over the data's distinct
          captions among as many real samples of one class (``distinct_real/A_to_B``).
        """
        out: dict[str, float] = {}
        conditions = max(1, n // PER_CONDITION)
        labels = self.test_ds.labels
        for a, src in enumerate(self.specs):
            rows = torch.nonzero(self.test_ds.mask[:, a]).flatten()
            if len(rows) == 0:
                continue
            idx = _condition_rows(rows, conditions, seed + 101 + a).repeat_interleave(PER_CONDITION)
            fake = generate({src.name: self.test_ds.features[a][idx]}, len(idx), seed + 101 + a)
            classes = labels[idx].view(conditions, PER_CONDITION)[:, 0]
            # Where the condition also fixes a colour (colour-digits' captions and images), real samples of one
            # condition share label and colour: the spread is measured against those.
            colours = self._named_colours(idx[::PER_CONDITION]) if self._pins_colour(src) else None
            for b, dst in enumerate(self.specs):
                if b == a:
                    continue
                key = f"{src.name}_to_{dst.name}"
                groups = fake[b].view(conditions, PER_CONDITION, -1)
                embedded = self.evaluators.embed(dst.name, fake[b]).view(conditions, PER_CONDITION, -1)
                out[f"spread/{key}"] = _spread(groups) / self._real_spread(b, classes, embed=False, colours=colours)
                out[f"spread_embed/{key}"] = _spread(embedded) / self._real_spread(b, classes, embed=True, colours=colours)
                recall, floor = self._class_recall(b, classes, embedded, k)
                out[f"cond_recall/{key}"], out[f"cond_recall_floor/{key}"] = recall, floor
                if dst.kind == "text":
                    made = [len(set(dst.decode(g))) for g in groups]
                    real = self._real_distinct(b, classes, seed)
                    out[f"distinct/{key}"] = sum(made) / len(made)
                    out[f"distinct_real/{key}"] = real
        return out

    def _class_rows(self, ds: MultimodalDataset, m: int, label: int) -> torch.Tensor:
        """Rows of ``ds`` whose label is ``label`` and whose modality ``m`` is present."""
        return torch.nonzero(ds.mask[:, m] & (ds.labels == label)).flatten()

    def _real_spread(self, m: int, classes: torch.Tensor, embed: bool, colours: torch.Tensor | None = None) -> float:
        """The real train split's mean within-class pairwise distance of modality ``m``, weighted as ``classes``
        (with ``colours``, per condition row: within label and named colour)."""
        keys = [(int(c), -1 if colours is None else int(k)) for c, k in
                zip(classes, colours if colours is not None else classes, strict=True)]
        train_colours = None if colours is None else self._train_colours
        per_key = {}
        for label, colour in set(keys):
            rows = self._class_rows(self.train_ds, m, label)
            if train_colours is not None and colour >= 0:
                rows = rows[train_colours[rows] == colour]
            if len(rows) > MAX_CLASS_ROWS:
                rows = rows[_seeded_subset(len(rows), MAX_CLASS_ROWS, label)]
            x = self.train_ds.features[m][rows]
            if embed:
                x = self.evaluators.embed(self.specs[m].name, x)
            per_key[(label, colour)] = _mean_pairwise(x) if len(x) >= 2 else float("nan")
        spread = sum(per_key[k] for k in keys) / len(keys)
        return spread if spread > 0 else float("nan")

    def _class_recall(self, m: int, classes: torch.Tensor, embedded: torch.Tensor, k: int) -> tuple[float, float]:
        """Improved recall per class of the generated samples [conditions, per condition, f] and of real train
        samples, against the real test samples of that class; each averaged over the classes with enough samples."""
        recalls, floors = [], []
        flat_classes = classes.repeat_interleave(embedded.shape[1])
        fake = embedded.reshape(-1, embedded.shape[-1])
        name = self.specs[m].name
        for label in classes.unique().tolist():
            real = self.evaluators.embed(name, self.test_ds.features[m][self._class_rows(self.test_ds, m, label)])
            made = fake[flat_classes == label]
            train = self.evaluators.embed(name, self.train_ds.features[m][self._class_rows(self.train_ds, m, label)])
            size = min(len(real), len(made), len(train))
            if size <= k:
                continue
            recalls.append(precision_recall(real[:size], made[:size], k)[1])
            floors.append(precision_recall(real[:size], train[:size], k)[1])
        if not recalls:
            return float("nan"), float("nan")
        return sum(recalls) / len(recalls), sum(floors) / len(floors)

    def _real_distinct(self, m: int, classes: torch.Tensor, seed: int) -> float:
        """Mean number of distinct decoded values among ``PER_CONDITION`` real train samples of one class."""
        spec, counts = self.specs[m], []
        rng = torch.Generator().manual_seed(seed)
        for label in classes.tolist():
            rows = self._class_rows(self.train_ds, m, int(label))
            pick = rows[torch.randperm(len(rows), generator=rng)[:PER_CONDITION]]
            counts.append(len(set(spec.decode(self.train_ds.features[m][pick]))))
        return sum(counts) / len(counts)

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
            embedded = self.evaluators.embed(spec.name, feats)
            m = min(len(embedded), len(real))
            precision, recall = precision_recall(real[:m], embedded[:m], k)
            out[f"fid/{spec.name}"] = frechet_distance(embedded, real)
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
