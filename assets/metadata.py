"""Metadata helpers shared by the assets: pictures a person would rather look at than read."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg

THUMBNAIL_MAX_SIDE = 768


def picture(path: str | Path, title: str = "picture") -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI), downscaled if large."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
