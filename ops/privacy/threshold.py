"""The memorisation threshold, set by real images the models never saw.

How close is "too close" depends on the data: chest X-rays resemble each other far more than
skin photographs do. So the audit does not fix a distance; it asks the held-out real test split
the same question it asks generated images (how far is your nearest training image?) and uses
the answers as the reference. A generated image is flagged ``memorised`` when it is closer to a
training image than all but ``percentile`` per cent of held-out real images are (default: the
1st percentile). By construction about ``percentile`` per cent of unseen real images would be
flagged too: that is the false-positive rate the threshold accepts, stated rather than hidden.
Copies (verbatim, mirrored, re-encoded, shifted) land far below it (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray
DEFAULT_PERCENTILE = 1.0
MIN_REFERENCE = 20  # fewer held-out images than this cannot place a low percentile


@dataclass(frozen=True)
class Threshold:
    """A distance below which an image counts as memorised, and where it came from."""

    value: float
    percentile: float
    reference: Array  # sorted held-out distances to their nearest training image

    @property
    def n_reference(self) -> int:
        return len(self.reference)

    def flags(self, distances: Array) -> Array:
        """True where a distance is strictly below the threshold."""
        return np.asarray(distances, dtype=np.float64) < self.value

    def reference_quantile(self, distances: Array) -> Array:
        """Share of held-out real images at least as close to the train split as each distance:
        0.0 means closer than every one of them."""
        ranks = np.searchsorted(self.reference, np.asarray(distances, np.float64), side="right")
        return ranks / max(1, self.n_reference)

    def summary(self) -> dict[str, Any]:
        ref = self.reference
        return {
            "threshold": float(self.value),
            "percentile": float(self.percentile),
            "n_reference": self.n_reference,
            "reference_min": float(ref[0]),
            "reference_median": float(np.median(ref)),
        }


def reference_threshold(
    reference_distances: Array, percentile: float = DEFAULT_PERCENTILE
) -> Threshold:
    """The ``percentile``-th percentile of the held-out distances (linear interpolation)."""
    ref = np.sort(np.asarray(reference_distances, dtype=np.float64))
    if not 0.0 < percentile < 50.0:
        raise ValueError(f"percentile must be in (0, 50), got {percentile}")
    if len(ref) < MIN_REFERENCE:
        raise ValueError(
            f"{len(ref)} held-out reference images; the threshold needs at least {MIN_REFERENCE}"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference distances must be finite")
    return Threshold(
        value=float(np.percentile(ref, percentile)), percentile=percentile, reference=ref
    )
