"""A small MedImgs of phantoms for the audit tests, and the edits a copier would make.

Phantoms (``ops.data.sources.phantoms.draw_phantom``) differ as real images do: pose, size,
intensity, texture and noise vary within a class, and each family's healthy and diseased
classes look alike. Stored as ingestion stores them: 64x64 RGB JPEG (quality 95) under
``medimgs/images/<split>/<class>/`` with a manifest.
"""

from __future__ import annotations

import io

import numpy as np
from metric_fixtures import save_image, write_manifest
from PIL import Image, ImageOps

from ops.data.sources.phantoms import draw_phantom
from ops.layout import DataLayout

CLASSES = (
    "chest_xray_normal",
    "chest_xray_cardiomegaly",
    "brain_mri_no_tumor",
    "brain_mri_glioma",
    "skin_nevus",
    "skin_melanoma",
)
SIZE = 64


def phantom(class_name: str, index: int, seed: int) -> Image.Image:
    """Phantom ``index`` of ``class_name`` as a ``SIZE`` square RGB picture (shorter side
    fitted, centre crop, as ingestion does)."""
    pixels = np.round(draw_phantom(class_name, index, seed) * 255).astype(np.uint8)
    img = Image.fromarray(pixels).convert("RGB")
    scale = SIZE / min(img.size)
    w, h = max(SIZE, round(img.width * scale)), max(SIZE, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    return img.crop((left, top, left + SIZE, top + SIZE))


def write_phantom_medimgs(
    layout: DataLayout, n_train: int = 16, n_test: int = 8, seed: int = 0
) -> list[dict]:
    """Write the JPEGs and the manifest; returns the manifest rows."""
    rows = []
    for class_name in CLASSES:
        for i in range(n_train + n_test):
            split = "train" if i < n_train else "test"
            image_id, rel = save_image(layout, split, class_name, phantom(class_name, i, seed))
            rows.append(
                {"image_id": image_id, "path": rel, "split": split, "class_name": class_name}
            )
    write_manifest(layout, rows)
    return rows


def mirrored(img: Image.Image) -> Image.Image:
    return ImageOps.mirror(img)


def jpeg_again(img: Image.Image, quality: int = 75) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def shifted(img: Image.Image, dy: int, dx: int) -> Image.Image:
    """Content moved by (dy, dx) pixels; the uncovered border repeats the edge pixels."""
    a = np.asarray(img.convert("RGB"))
    h, w = a.shape[:2]
    pad = np.pad(a, ((abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return Image.fromarray(pad[top : top + h, left : left + w])
