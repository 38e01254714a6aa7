"""Unbiased KID (Binkowski et al. 2018, "Demystifying MMD GANs"), computed per class.

KID = MMD^2_u between generated and real features with the cubic polynomial kernel
k(a, b) = (a.b / d + 1)^3. The unbiased estimator averages the within-set kernel over pairs
i != j only, so its expectation is the population MMD^2 when each side is an i.i.d. sample.

Why per class, then averaged: the benchmark's sets are *class-balanced* (64 images of every
class on both sides), i.e. stratified, not i.i.d. draws from the class mixture. Concatenating
them and applying the i.i.d. estimator (what the benchmark did before, through clean-fid's
``kernel_distance``) under-weights the same-class pairs of the within-set terms (a share
(n_c - 1)/(n - 1) < 1/C of the i != j pairs, against exactly 1/C in the cross term), so with
well-separated classes every good model got a clearly negative KID. Within one class each side
*is* an i.i.d. sample, so the per-class estimate is unbiased, and their mean is the KID of the
class-balanced mixture. ``tests/test_eval_estimators.py`` shows both.

Bootstrap resamples (``ops.eval.bootstrap``) repeat images; a repeated image paired with
itself is a diagonal term in disguise. :func:`mmd2_unbiased` therefore takes the resampled
indices and drops every pair of equal original indices, keeping each replicate unbiased.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a, b) = (a.b / d + 1)^3, the KID kernel (clean-fid's and Binkowski et al.'s)."""
    d = a.shape[1]
    return (a @ b.T / d + 1.0) ** 3


def _offdiag_mean(k: np.ndarray, idx: np.ndarray) -> float:
    """Mean of k[idx_i, idx_j] over pairs whose original indices differ."""
    sub = k[np.ix_(idx, idx)]
    keep = idx[:, None] != idx[None, :]
    count = int(keep.sum())
    return float(sub[keep].sum() / count) if count else float("nan")


def mmd2_unbiased(
    kxx: np.ndarray,
    kyy: np.ndarray,
    kxy: np.ndarray,
    ix: np.ndarray | None = None,
    iy: np.ndarray | None = None,
) -> float:
    """MMD^2_u from precomputed kernel matrices, on the (re)sample given by index arrays
    ``ix``/``iy`` (default: every row once)."""
    ix = np.arange(kxx.shape[0]) if ix is None else np.asarray(ix)
    iy = np.arange(kyy.shape[0]) if iy is None else np.asarray(iy)
    cross = float(kxy[np.ix_(ix, iy)].mean())
    return _offdiag_mean(kxx, ix) + _offdiag_mean(kyy, iy) - 2.0 * cross


class KernelCache:
    """The three kernel matrices of one class, computed once and reused by every bootstrap
    replicate (n = 64: three 64 x 64 matrices)."""

    def __init__(self, gen: np.ndarray, ref: np.ndarray) -> None:
        x = np.asarray(gen, dtype=np.float64)
        y = np.asarray(ref, dtype=np.float64)
        if min(len(x), len(y)) < 2:
            raise ValueError("KID needs at least 2 feature vectors on each side")
        self.kxx = polynomial_kernel(x, x)
        self.kyy = polynomial_kernel(y, y)
        self.kxy = polynomial_kernel(x, y)

    def kid(self, ix: np.ndarray | None = None, iy: np.ndarray | None = None) -> float:
        return mmd2_unbiased(self.kxx, self.kyy, self.kxy, ix, iy)


def kid_unbiased(gen: np.ndarray, ref: np.ndarray) -> float:
    """KID of one class on the full sets (no random subsets: the estimate is deterministic)."""
    return KernelCache(gen, ref).kid()


def class_balanced_kid(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """Mean over classes of the per-class unbiased KID: the benchmark's pooled KID."""
    return float(np.mean([kid_unbiased(gen[c], ref[c]) for c in gen]))
