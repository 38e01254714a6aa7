"""Fidelity and diversity apart: precision/recall (Kynkaanniemi et al. 2019, "Improved
Precision and Recall Metric for Assessing Generative Models") and density/coverage (Naeem et
al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models"), in the benchmark's
features.

FID mixes two failures into one number: images that look wrong (fidelity) and images that all
look alike (diversity, mode collapse). These four separate them, each from k-nearest-neighbour
balls (radius = distance to the k-th neighbour within its own set):

* precision: share of generated images inside some real ball (fidelity);
* recall: share of real images inside some generated ball (diversity);
* density: mean number of real balls a generated image falls in, / k (fidelity, robust to
  real outliers that inflate precision);
* coverage: share of real images whose ball holds at least one generated image (diversity,
  robust to generated outliers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Manifold:
    precision: float
    recall: float
    density: float
    coverage: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row."""
    d = _sq_distances(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def manifold_metrics(gen: np.ndarray, ref: np.ndarray, k: int = 5) -> Manifold:
    """Precision, recall, density and coverage of ``gen`` against ``ref`` with k-NN balls."""
    x = np.asarray(gen, dtype=np.float64)
    y = np.asarray(ref, dtype=np.float64)
    if min(len(x), len(y)) < 2:
        raise ValueError("precision/recall need at least 2 feature vectors on each side")
    k = max(1, min(int(k), len(x) - 1, len(y) - 1))
    r_real, r_gen = knn_radii(y, k), knn_radii(x, k)
    d_gen_real = _sq_distances(x, y)  # (n_gen, n_ref)
    inside_real = d_gen_real <= r_real[None, :]
    precision = float(inside_real.any(axis=1).mean())
    recall = float((d_gen_real <= r_gen[:, None]).any(axis=0).mean())
    density = float(inside_real.sum(axis=1).mean() / k)
    coverage = float((d_gen_real.min(axis=0) <= r_real).mean())
    return Manifold(precision, recall, density, coverage)
