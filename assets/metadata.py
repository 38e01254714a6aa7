"""Metadata helpers shared by the assets: pictures a person would rather look at than read."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg

THUMBNAIL_MAX_SIDE = 768


def picture(path: str | Path, title: str = "picture") -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI), downscaled to at most
    ``THUMBNAIL_MAX_SIDE`` pixels a side so Dagster's database stays small; a missing file
    says so instead of failing the materialisation."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return dg.MetadataValue.text(f"missing: {path}")
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
