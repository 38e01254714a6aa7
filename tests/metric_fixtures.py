"""A small MedImgs-shaped dataset for metric and classifier tests: synthetic shapes.

Three clearly separable classes (a disc, a square outline, a cross) on a noisy dark background,
grey like X-rays, stored as RGB JPEGs under ``medimgs/images/<split>/<class>/`` with a manifest
that has the columns of the real one. Seeded: same arguments, same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ops.data.cleaning.tables import image_path
from ops.layout import DataLayout

SHAPES = ("disc", "square", "cross")


def save_image(
    layout: DataLayout, split: str, class_name: str, img: Image.Image
) -> tuple[str, str]:
    """Store ``img`` where ingestion would (``ops.data.cleaning.tables.image_path``, id = content
    hash); returns (image_id, path relative to the data directory)."""
    image_id = hashlib.sha256(img.tobytes()).hexdigest()[:16]
    rel = image_path(split, class_name, image_id)
    (layout.root / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(layout.root / rel, quality=95)
    return image_id, rel


def write_manifest(layout: DataLayout, rows: list[dict]) -> pd.DataFrame:
    """``medimgs/manifest.parquet`` from fixture rows; returns it."""
    manifest = pd.DataFrame(rows)
    layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(layout.manifest, index=False)
    return manifest


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One grey uint8 (size, size, 3) image of ``kind`` with random position, scale, contrast."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.22, 0.32) * size
    cy, cx = rng.uniform(0.4, 0.6, size=2) * size
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    elif kind == "square":
        inner = r * 0.6
        outer = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        mask = outer & ~((np.abs(yy - cy) <= inner) & (np.abs(xx - cx) <= inner))
    elif kind == "cross":
        w = r * 0.3
        mask = ((np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r)) | (
            (np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r)
        )
    else:
        raise ValueError(kind)
    background = rng.uniform(20, 50)
    foreground = rng.uniform(170, 230)
    img = np.where(mask, foreground, background) + rng.normal(0, 8, size=(size, size))
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def make_shape_dataset(
    layout: DataLayout,
    classes: Sequence[str] = SHAPES,
    n_train: int = 30,
    n_test: int = 12,
    n_holdout: int = 2,
    size: int = 32,
    seed: int = 0,
) -> pd.DataFrame:
    """Write images + ``manifest.parquet``; ``n_holdout`` extra train rows per class carry
    ``holdout=True``. Returns the manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in classes:
        plan = [("train", False)] * n_train + [("test", False)] * n_test
        plan += [("train", True)] * n_holdout
        for split, holdout in plan:
            img = Image.fromarray(draw_shape(kind, size, rng))
            image_id, rel = save_image(layout, split, kind, img)
            rows.append(
                {
                    "image_id": image_id,
                    "path": rel,
                    "split": split,
                    "species": "phantom",
                    "body_part": kind,
                    "modality": "synthetic X-ray",
                    "disease": "none",
                    "class_name": kind,
                    "prompt": f"synthetic X-ray of a phantom {kind}, none",
                    "width": size,
                    "height": size,
                    "source": "shapes",
                    "source_file": f"{image_id}.png",
                    "source_format": "png",
                    "holdout": holdout,
                }
            )
    return write_manifest(layout, rows)
