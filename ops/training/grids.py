"""Image grids (PNG) for people to look at: samples per class, reconstructions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 160


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] (the VAE's range) to RGB PIL images."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]


def image_grid(
    images: Sequence[Image.Image],
    cols: int | None = None,
    row_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Images row by row, ``cols`` per row (default: a square), with an optional text label
    left of each row."""
    if not images:
        raise ValueError("no images for the grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    w, h = images[0].size
    rows = -(-len(images) // cols)
    font = ImageFont.load_default()
    # wide enough for the longest label (class names run to ~50 characters)
    widest = max((font.getlength(label) for label in row_labels or []), default=0)
    left = max(LABEL_WIDTH, int(widest) + 10) if row_labels else 0
    grid = Image.new("RGB", (left + cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img.convert("RGB"), (left + pad + c * (w + pad), pad + r * (h + pad)))
    if row_labels:
        draw = ImageDraw.Draw(grid)
        for r, label in enumerate(row_labels[:rows]):
            draw.text((4, pad + r * (h + pad) + h // 2 - 6), label, fill="black", font=font)
    return grid


def save_grid(
    path: Path,
    images: Sequence[Image.Image],
    cols: int,
    row_labels: Sequence[str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols, row_labels).save(path)
    return path


def thumbnail(path: Path, max_side: int = 512) -> Image.Image:
    """A downscaled copy of an image file (for metadata previews)."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((max_side, max_side))
    return img
