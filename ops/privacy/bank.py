"""The MedImgs splits as the audit needs them: canonical pixel vectors (and, given a feature
extractor, unit feature vectors) of every image, computed once and streamed in batches so that
paper-scale splits never sit in memory as pictures.

``train_bank`` is what generated images are compared against; ``calibrate`` asks the held-out
test split the same question to set the thresholds (``threshold``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from ops.layout import DataLayout
from ops.privacy.nearest import Neighbours, nearest, unit_features
from ops.privacy.normalise import PixelSpec, bank_vectors, canonical_stack, query_variants
from ops.privacy.threshold import DEFAULT_PERCENTILE, Threshold, reference_threshold

Array = np.ndarray
FeatureFn = Callable[[list[Image.Image]], Array]  # images -> (n, d) features
BATCH = 64


@dataclass(frozen=True)
class Encoded:
    """Images reduced to what the search needs: canonical forms and optional unit features."""

    canon: Array  # (n, fine, fine) float32, or what ``encode``'s ``reduce`` made of it
    features: Array | None  # (n, d) unit vectors, or None without a feature extractor


@dataclass(frozen=True)
class TrainBank:
    """The train split: where each image lives, its class, and its search vectors."""

    paths: list[str]  # relative to the data directory, as in the manifest
    class_names: list[str]
    pixels: Array  # (m, dim) unit vectors of central crops
    features: Array | None
    spec: PixelSpec

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class Calibration:
    """Thresholds from held-out real images: pixel space always, feature space if given."""

    pixel: Threshold
    feature: Threshold | None


def encode(
    images: Iterable[Image.Image],
    spec: PixelSpec,
    features: FeatureFn | None,
    reduce: Callable[[Array], Array] | None = None,
) -> Encoded:
    """Canonical forms and features of ``images``, ``BATCH`` pictures at a time; ``reduce``
    maps each batch of canonical forms to what is kept (the bank keeps only its vectors)."""
    canon, feats, batch = [], [], []

    def flush() -> None:
        stack = canonical_stack(batch, spec)
        canon.append(reduce(stack) if reduce else stack)
        if features is not None:
            feats.append(np.asarray(features(batch), dtype=np.float32))
        batch.clear()

    for image in images:
        batch.append(image)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    if not canon:  # no images: empty arrays, and the feature extractor is never called
        empty = np.zeros((0, 1), np.float32) if features else None
        stack = canonical_stack([], spec)
        return Encoded(reduce(stack) if reduce else stack, empty)
    stacked = np.concatenate(canon)
    return Encoded(stacked, unit_features(np.concatenate(feats)) if features else None)


def split_rows(layout: DataLayout, split: str) -> pd.DataFrame:
    """Manifest rows of one split; a clear error where there is no MedImgs yet."""
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"no MedImgs manifest at {layout.manifest}: run `llcm ingest`")
    manifest = pd.read_parquet(layout.manifest, columns=["path", "split", "class_name"])
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the MedImgs manifest at {layout.manifest} has no {split!r} images")
    return rows


def _pictures(layout: DataLayout, paths: Sequence[str]) -> Iterable[Image.Image]:
    for rel in paths:
        with Image.open(layout.root / rel) as im:
            im.load()
            yield im.copy()


def train_bank(
    layout: DataLayout, spec: PixelSpec | None = None, features: FeatureFn | None = None
) -> TrainBank:
    """Encode the MedImgs train split (the images the models learned from)."""
    spec = spec or PixelSpec()
    rows = split_rows(layout, "train")
    enc = encode(_pictures(layout, rows["path"]), spec, features, lambda c: bank_vectors(c, spec))
    return TrainBank(
        paths=list(rows["path"]),
        class_names=list(rows["class_name"]),
        pixels=enc.canon,
        features=enc.features,
        spec=spec,
    )


def search(
    enc: Encoded, bank: TrainBank, device: str | None = None
) -> tuple[Neighbours, Neighbours | None]:
    """Nearest training image of each encoded query in pixel space and, if both sides have
    features, in feature space (else None)."""

    def variants(rows: slice) -> Array:
        return query_variants(enc.canon[rows], bank.spec)

    pixel = nearest(variants, len(enc.canon), bank.pixels, device=device)
    feature = None
    if enc.features is not None and bank.features is not None:
        feature = nearest(enc.features, len(enc.features), bank.features, device=device)
    return pixel, feature


def calibrate(
    layout: DataLayout,
    bank: TrainBank,
    percentile: float = DEFAULT_PERCENTILE,
    features: FeatureFn | None = None,
    device: str | None = None,
) -> Calibration:
    """Thresholds from the held-out test split's distances to the train split."""
    rows = split_rows(layout, "test")
    enc = encode(_pictures(layout, rows["path"]), bank.spec, features)
    pixel, feature = search(enc, bank, device)
    return Calibration(
        pixel=reference_threshold(pixel.distance, percentile),
        feature=reference_threshold(feature.distance, percentile) if feature else None,
    )
