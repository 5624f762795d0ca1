"""Distances between sets of feature vectors: the Frechet distance and improved precision and recall.

Both are computed in the evaluator networks' feature space (:mod:`fastmmgan.evaluator_nets`); the few lines
are our own, in torch, because the space is ours (not Inception's) and the inputs are tensors already.
"""

from __future__ import annotations

import torch

from .errors import FastMMGANError

DEFAULT_K = 3


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
