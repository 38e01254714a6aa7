"""The closest (query, training image) pairs as one picture, for a person to judge.

A distance says how close; only a look says whether the two are the same patient's picture or
two healthy chests that happen to align. Each row shows the query, its nearest training image
and, underneath, the distance and the verdict; the closest pairs come first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ops.layout import DataLayout

TILE = 96
CAPTION = 14


def _tile(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)


def closest_pairs_picture(
    records: Sequence[dict[str, Any]],
    query_image: Callable[[dict[str, Any]], Image.Image],
    layout: DataLayout,
    n: int = 8,
    columns: int = 2,
) -> Image.Image:
    """A grid of the ``n`` closest pairs: [query | nearest train] with a caption each."""
    closest = sorted(records, key=lambda r: r["distance"])[:n]
    if not closest:
        return Image.new("RGB", (2 * TILE, TILE + CAPTION), "black")
    columns = min(columns, len(closest))
    rows = -(-len(closest) // columns)
    cell_w, cell_h = 2 * TILE + 8, TILE + CAPTION + 4
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "black")
    draw = ImageDraw.Draw(sheet)
    for k, record in enumerate(closest):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        with Image.open(layout.root / record["nearest_train_image"]) as train:
            sheet.paste(_tile(train), (x + TILE, y))
        sheet.paste(_tile(query_image(record)), (x, y))
        verdict = "MEMORISED" if record["memorised"] else "ok"
        colour = (255, 80, 80) if record["memorised"] else (200, 200, 200)
        draw.text((x + 2, y + TILE + 1), f"d={record['distance']:.3f} {verdict}", fill=colour)
    return sheet


def save_closest_pairs(
    records: Sequence[dict[str, Any]],
    query_image: Callable[[dict[str, Any]], Image.Image],
    layout: DataLayout,
    path: str | Path,
    n: int = 8,
) -> Path:
    """Write the closest-pairs picture as PNG at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    closest_pairs_picture(records, query_image, layout, n).save(path)
    return path
