"""The numbers of one benchmark cell: FID, KID and class fidelity, with their sample sizes.

Why features, not folders: the benchmark generates ~175k images (models x steps x classes x
images); writing them all to disk only to read them back is wasted work. Generation streams
uint8 batches into feature extraction (``ops.eval.features``), the moments accumulate in a
``FeatureStats`` (``ops.eval.distances``, clean-fid's own ``frechet_distance`` and
``kernel_distance``), and this module turns a generated and a reference accumulator into a
cell's metrics:

* FID's sample estimate is biased upwards by O(1/n), and with n <= d the sample covariance has
  rank <= n - 1 < d, so the matrix square root is ill-conditioned: every result carries ``n``
  and a warning in that case (:func:`sample_size_warnings`).
* KID is the unbiased MMD^2 estimate, so usable with few images.
* class fidelity = share of generated images that the domain classifier assigns to the class
  in the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ops.eval.distances import FeatureStats, fid_from_stats, kid


@dataclass
class CellMetrics:
    """FID (and KID when features are at hand) of one benchmark cell, with its sample sizes."""

    fid: float
    n_gen: int
    n_ref: int
    feature_dim: int
    kid: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fid": self.fid,
            "kid": self.kid,
            "n": self.n_gen,
            "n_ref": self.n_ref,
            "feature_dim": self.feature_dim,
            "warnings": "; ".join(self.warnings),
        }


def sample_size_warnings(n_gen: int, n_ref: int, dim: int) -> list[str]:
    """A warning for each side whose covariance cannot be full rank (rank <= n - 1 < dim)."""
    out = []
    for side, n in (("generated", n_gen), ("reference", n_ref)):
        if n <= dim:
            out.append(f"{side} n={n} <= feature dim {dim}: covariance rank-deficient, FID biased")
    return out


def evaluate_cell(
    gen: FeatureStats,
    ref: FeatureStats,
    gen_feats: np.ndarray | None = None,
    ref_feats: np.ndarray | None = None,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> CellMetrics:
    """FID from the two accumulators; KID too when both feature sets are given."""
    result = CellMetrics(
        fid=fid_from_stats(gen, ref),
        n_gen=gen.n,
        n_ref=ref.n,
        feature_dim=gen.dim,
        warnings=sample_size_warnings(gen.n, ref.n, gen.dim),
    )
    if gen_feats is not None and ref_feats is not None:
        if min(len(gen_feats), len(ref_feats)) >= 2:
            result.kid = kid(gen_feats, ref_feats, kid_subsets, kid_subset_size, seed)
        else:
            result.warnings.append("KID skipped: fewer than 2 images on a side")
    return result


def class_fidelity(predicted: np.ndarray | Sequence[int], target: int | np.ndarray) -> float:
    """Share of generated images whose predicted class (domain classifier) is the prompted one."""
    pred = np.asarray(predicted)
    if pred.size == 0:
        raise ValueError("class fidelity of an empty set")
    return float(np.mean(pred == np.asarray(target)))
