"""Class-stratified, paired bootstrap intervals for every FID, KID and class fidelity, and for
every difference against a baseline model.

Resampling (Efron & Tibshirani 1993, ch. 13; stratified as in their ch. 6.4): each replicate
draws, *within every class*, n generated and n_ref real images with replacement, so each
replicate keeps the benchmark's class balance. The draws of class c in replicate b depend only
on (``bootstrap_seed``, class name, n, side, b), never on the model, the process layout or the
other classes. Two cells with the same n per class therefore resample the *same image
positions*; since every model samples image i of a class from the same starting noise
(``ops.eval.context.image_seed``), replicate b of two models compares like with like, and the
replicate-wise difference is a paired bootstrap of the difference. Both sides share one
reference resample per replicate.

Interval: the 2.5 and 97.5 percentiles of the replicates' deviations from their own mean, put
around the point estimate (the percentile interval with the bootstrap's bias estimate removed).
Why not the raw percentiles: a resample repeats about a third of the images, which inflates a
plug-in FID (fewer distinct images, a larger small-sample bias), so raw percentile intervals of
good models would not even contain their own point estimate. KID replicates drop pairs of a
repeated image with itself (``ops.eval.kid``) and are unbiased already.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ops.eval.classwise import BOOTSTRAPPED, ClassSample, replicate_metrics

LEVEL = 0.95
GEN, REF = 0, 1


def resample_indices(seed: int, class_name: str, n: int, side: int, replicates: int) -> np.ndarray:
    """(replicates, n) indices in [0, n): a pure function of its arguments (see module doc)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(class_name.encode()), int(n), int(side)])
    return rng.integers(0, n, size=(int(replicates), int(n)))


def bootstrap(
    samples: Sequence[ClassSample], replicates: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Replicates of every row: {row: {metric: (replicates,) array}} for ``BOOTSTRAPPED``."""
    gen = [resample_indices(seed, s.name, len(s.gen), GEN, replicates) for s in samples]
    ref = [resample_indices(seed, s.name, len(s.ref), REF, replicates) for s in samples]
    out: dict[str, dict[str, list[float]]] = {}
    for b in range(int(replicates)):
        rows = replicate_metrics(samples, [g[b] for g in gen], [r[b] for r in ref])
        for row, metrics in rows.items():
            for key in BOOTSTRAPPED:
                out.setdefault(row, {}).setdefault(key, []).append(metrics[key])
    return {row: {k: np.asarray(v) for k, v in m.items()} for row, m in out.items()}


def interval(point: float, reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The bias-removed percentile interval of ``point`` from its replicates (module doc)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(point) or reps.size < 2:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    dev = reps - reps.mean()
    lo, hi = np.quantile(dev, [tail, 1.0 - tail])
    return float(point + lo), float(point + hi)


def significant(lo: float, hi: float) -> bool:
    """A difference is significant when its interval excludes 0."""
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))
