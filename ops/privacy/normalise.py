"""Pixel-space canonical form for the memorisation audit.

A copy of a training image rarely comes back byte for byte: it may be mirrored, re-encoded as
JPEG, shifted by a few pixels, brightened. The canonical form removes what such edits change
and keeps what makes one picture that picture:

- grey (luminance): a recoloured copy is still a copy, and the structure lives in luminance;
- a small square (``size``, default 32) by box averaging: JPEG blocking and noise average out,
  and a shift of a few pixels at 64 or 512 px becomes at most a pixel or two;
- a light Gaussian blur: what is left of a sub-pixel shift costs little;
- per-vector standardisation (zero mean, unit norm): brightness and contrast do not count.

Distances are then Euclidean between unit vectors, ``sqrt(2 - 2 r)`` with ``r`` the Pearson
correlation of the two canonical crops: 0 for the same picture, about 1.41 for unrelated ones.

Shift and mirror tolerance: a training image is kept as its central crop (``size - 2 *
max_shift`` square); a query image is expanded into every crop of that size within
``max_shift`` pixels of the centre, in steps of ``1 / subpixel`` pixel, for the image and its
horizontal mirror. The audit takes the minimum distance over these variants. The sub-pixel
steps matter: a 3-pixel shift at 64 px is 1.5 canonical pixels, and the half pixel left over by
whole-pixel steps costs as much distance as the difference between two unseen images of a
class. Both sides are therefore drawn at ``size * subpixel``, blurred there, cropped, and block
averaged down to ``size``. Held-out real images get the same treatment, so the threshold they
set (``threshold``) accounts for the variants' extra chances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

Array = np.ndarray
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class PixelSpec:
    """How images are canonicalised; the train bank and every query must share one spec."""

    size: int = 32  # canonical side in pixels
    max_shift: int = 2  # canonical pixels each way (4 px at 64, 32 px at 512)
    subpixel: int = 2  # shift steps per canonical pixel
    blur: float = 0.5  # Gaussian sigma in canonical pixels; 0 disables
    mirror: bool = True  # also match the horizontal mirror

    def __post_init__(self) -> None:
        if self.size < 8 or not 0 <= self.max_shift < self.size // 4 or self.subpixel < 1:
            raise ValueError(f"PixelSpec needs size >= 8, 0 <= max_shift < size/4: {self}")

    @property
    def crop(self) -> int:
        return self.size - 2 * self.max_shift

    @property
    def dim(self) -> int:
        return self.crop * self.crop

    @property
    def fine(self) -> int:
        """Side of the canonical form as stored: ``size * subpixel``."""
        return self.size * self.subpixel

    @property
    def n_variants(self) -> int:
        return (2 if self.mirror else 1) * (2 * self.max_shift * self.subpixel + 1) ** 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PixelSpec:
        """The spec that a ``privacy:`` params section sets; other keys are ignored."""
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def grey(image: Image.Image) -> Array:
    """Luminance as float32 in [0, 255], whatever the mode (16-bit grey is stretched)."""
    if image.mode in _HIGH_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
        return scaled.astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def canonical(image: Image.Image, spec: PixelSpec) -> Array:
    """The image as a ``spec.fine`` square grey float32 array, blurred (shorter side fitted,
    centre cropped, as ingestion does, so a non-square copy lines up with its square original)."""
    values = Image.fromarray(grey(image), mode="F")
    side = spec.fine
    width, height = values.size
    scale = side / min(width, height)
    new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
    values = values.resize((new_w, new_h), Image.Resampling.BOX)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    out = np.asarray(values.crop((left, top, left + side, top + side)), np.float32)
    return gaussian_filter(out, spec.blur * spec.subpixel) if spec.blur > 0 else out


def canonical_stack(images: list[Image.Image], spec: PixelSpec) -> Array:
    """(n, fine, fine) float32 canonical forms of ``images``."""
    if not images:
        return np.zeros((0, spec.fine, spec.fine), np.float32)
    return np.stack([canonical(im, spec) for im in images])


def unit_rows(vectors: Array) -> Array:
    """Rows centred and scaled to unit norm; a constant row stays zero (matches nothing)."""
    vectors = vectors - vectors.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 1e-6)


def _reduced(canon: Array, py: int, px: int, spec: PixelSpec) -> Array:
    """Block averages (``subpixel`` square) of the fine grid, starting ``py`` rows and ``px``
    columns in: the canonical image at that sub-pixel phase."""
    k, n = spec.subpixel, len(canon)
    by, bx = (spec.fine - py) // k, (spec.fine - px) // k
    grid = canon[:, py : py + by * k, px : px + bx * k]
    return grid.reshape(n, by, k, bx, k).mean(axis=(2, 4))


def bank_vectors(canon: Array, spec: PixelSpec) -> Array:
    """(m, dim) unit vectors of the central crops: how training images are stored."""
    s, c = spec.max_shift, spec.crop
    crop = _reduced(canon, 0, 0, spec)[:, s : s + c, s : s + c]
    return unit_rows(crop.reshape(len(canon), -1).astype(np.float32))


def query_variants(canon: Array, spec: PixelSpec) -> Array:
    """(n, n_variants, dim) unit vectors of every shifted (and mirrored) crop of each query.

    A fine offset ``d`` is ``q`` whole canonical pixels plus ``p`` fine steps: the crop at
    ``q`` of the grid reduced from phase ``p``. Each view is reduced once per (row phase,
    column phase); the shifted crops are then slices."""
    k, c, n = spec.subpixel, spec.crop, len(canon)
    views = [canon, canon[:, :, ::-1]] if spec.mirror else [canon]
    offsets = [divmod(d, k) for d in range(2 * spec.max_shift * k + 1)]
    crops = []
    for view in views:
        grids = {(py, px): _reduced(view, py, px, spec) for py in range(k) for px in range(k)}
        for qy, py in offsets:
            for qx, px in offsets:
                crops.append(grids[py, px][:, qy : qy + c, qx : qx + c].reshape(n, -1))
    return unit_rows(np.stack(crops, axis=1).astype(np.float32))
