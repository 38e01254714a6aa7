"""FID and KID between feature sets, with moments that merge exactly across shards and classes.

* FID = ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)), the Frechet distance between
  Gaussians fitted to the two feature sets (S: unbiased sample covariance, as ``np.cov``),
  computed by ``cleanfid.fid.frechet_distance``.
* KID = MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^3, unbiased estimate averaged
  over random subsets (``cleanfid.fid.kernel_distance``).

Why an accumulator (:class:`FeatureStats`): generated images stream through feature
extraction batch by batch and are never written, so the per-cell moments are summed as they
come, and merged exactly across the processes of a sharded run and across classes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from cleanfid import fid as cleanfid_fid


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
@dataclass
class FeatureStats:
    """Running first and second moments of features, in float64.

    Keeps n, sum(x) and sum(x x^T) rather than mean and covariance, because sums merge by
    addition: stats of shards (batches, processes, GPUs, classes) ``merge`` into the stats of
    the union, bit-for-bit equal to accumulating the same batches in the same order.
    ``covariance`` is the unbiased estimate, equal to ``np.cov(x, rowvar=False)``.
    """

    dim: int
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_outer: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = np.zeros(self.dim, dtype=np.float64)
        if self.sum_outer is None:
            self.sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        self.sum = np.asarray(self.sum, dtype=np.float64)
        self.sum_outer = np.asarray(self.sum_outer, dtype=np.float64)
        if self.sum.shape != (self.dim,) or self.sum_outer.shape != (self.dim, self.dim):
            raise ValueError("FeatureStats sums do not match dim")

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        feats = np.atleast_2d(np.asarray(feats))
        stats = cls(dim=feats.shape[1])
        stats.update(feats)
        return stats

    def update(self, feats: np.ndarray | torch.Tensor) -> FeatureStats:
        """Add a batch ``(B, dim)`` of features; returns self."""
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
        x = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dim {x.shape[1]}, stats expect {self.dim}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The stats of the union of both feature sets (a new object)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dims {self.dim} and {other.dim}")
        return FeatureStats(
            self.dim, self.n + other.n, self.sum + other.sum, self.sum_outer + other.sum_outer
        )

    @classmethod
    def merge_all(cls, stats: Iterable[FeatureStats]) -> FeatureStats:
        items = list(stats)
        if not items:
            raise ValueError("nothing to merge")
        out = items[0].merge(cls(items[0].dim))
        for item in items[1:]:
            out = out.merge(item)
        return out

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("mean of empty FeatureStats")
        return self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased: (sum x x^T - n mu mu^T) / (n - 1). float64 keeps the cancellation harmless
        for network features (means and spreads of similar magnitude)."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
        mu = self.mean
        cov = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (cov + cov.T) / 2

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "n": np.asarray(self.n, dtype=np.int64),
            "sum": self.sum,
            "sum_outer": self.sum_outer,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureStats:
        total = np.asarray(arrays["sum"], dtype=np.float64)
        return cls(total.shape[0], int(arrays["n"]), total, arrays["sum_outer"])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), by clean-fid's own function (so the
    numbers match clean-fid's, including its eps fallback for a singular product)."""
    # clean-fid prints its singular-product fallback and passes scipy's deprecated ``disp``
    with contextlib.redirect_stdout(None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*disp.*")
        return float(cleanfid_fid.frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_stats(gen: FeatureStats, ref: FeatureStats) -> float:
    return frechet_distance(gen.mean, gen.covariance, ref.mean, ref.covariance)


@contextlib.contextmanager
def _seeded_numpy_global(seed: int) -> Iterator[None]:
    """clean-fid's kernel_distance draws subsets from numpy's global RNG: seed it for the call
    (same seed, same number) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: unbiased MMD^2 with kernel (a.b/d + 1)^3, averaged over ``num_subsets`` random subsets
    of size m = min(n1, n2, max_subset_size); clean-fid's ``kernel_distance``, seeded."""
    feats1 = np.asarray(feats1, dtype=np.float64)
    feats2 = np.asarray(feats2, dtype=np.float64)
    if min(len(feats1), len(feats2)) < 2:
        raise ValueError("KID needs at least 2 feature vectors on each side")
    with _seeded_numpy_global(seed):
        return float(cleanfid_fid.kernel_distance(feats1, feats2, num_subsets, max_subset_size))
