"""MedImgs manifest rows and their images as tensors, for the VAE and the latents stage."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ops.layout import DataLayout

# Manifest columns that determine what the model stages compute from a row.
CONTENT_COLUMNS = ["image_id", "path", "split", "class_name", "prompt", "holdout"]


def read_manifest(layout: DataLayout) -> pd.DataFrame:
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} does not exist: run medimgs_manifest first")
    manifest = pd.read_parquet(layout.manifest)
    if "holdout" not in manifest:
        manifest["holdout"] = False
    manifest["holdout"] = manifest["holdout"].fillna(False).astype(bool)
    return manifest


def base_training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Train split minus held-out families (kept unseen for later fine-tuning), by image_id."""
    rows = manifest[(manifest["split"] == "train") & ~manifest["holdout"]]
    return rows.sort_values("image_id").reset_index(drop=True)


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """All rows of one split (held-out families included), by image_id."""
    rows = manifest[manifest["split"] == split]
    return rows.sort_values("image_id").reset_index(drop=True)


def rows_hash(rows: pd.DataFrame) -> str:
    """Hash of the rows' content columns: changes when what a stage reads changes."""
    cols = [c for c in CONTENT_COLUMNS if c in rows]
    text = rows[cols].to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_image(layout: DataLayout, relative_path: str) -> torch.Tensor:
    """One manifest image as ``uint8 [3, H, W]``."""
    with Image.open(layout.root / relative_path) as img:
        arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_images(layout: DataLayout, rows: pd.DataFrame) -> torch.Tensor:
    """All images of ``rows`` as ``uint8 [N, 3, H, W]`` (the tiny presets fit in memory)."""
    return torch.stack([load_image(layout, p) for p in rows["path"]])


def iter_image_batches(
    layout: DataLayout, rows: pd.DataFrame, batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start_row, uint8 batch)`` over ``rows``, reading lazily (any dataset size)."""
    paths = rows["path"].tolist()
    for start in range(0, len(paths), batch_size):
        yield start, torch.stack([load_image(layout, p) for p in paths[start : start + batch_size]])


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range SD's VAE works in."""
    return images.float() / 127.5 - 1.0
