"""What a person looks at after cleaning: the per-class table (like the paper's Tables 1-2)
and a grid of sample images per class."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

LABEL_WIDTH = 260


CLASS_TABLE_COLUMNS = [
    "class_name",
    "species",
    "body_part",
    "modality",
    "disease",
    "train",
    "test",
    "holdout",
    "sources",
]


def class_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per class: labels, train/test counts, sources, held-out flag."""
    if manifest.empty:
        return pd.DataFrame(columns=CLASS_TABLE_COLUMNS)
    counts = manifest.pivot_table(
        index="class_name", columns="split", values="image_id", aggfunc="count", fill_value=0
    )
    labels = manifest.groupby("class_name").agg(
        species=("species", "first"),
        body_part=("body_part", "first"),
        modality=("modality", "first"),
        disease=("disease", "first"),
        holdout=("holdout", "first"),
        sources=("source", lambda s: ", ".join(sorted(set(s)))),
    )
    table = labels.join(counts.reindex(columns=["train", "test"], fill_value=0))
    table = table.reset_index().sort_values(["holdout", "species", "body_part", "class_name"])
    return table[CLASS_TABLE_COLUMNS].reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style markdown table (no optional dependency such as ``tabulate``)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in table.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def sample_grid(
    manifest: pd.DataFrame, root: Path, out: Path, per_class: int = 6, thumb: int = 48
) -> Path | None:
    """Write a PNG with one labelled row per class of up to ``per_class`` train images."""
    if manifest.empty:
        return None
    classes = class_table(manifest)["class_name"].tolist()
    canvas = Image.new(
        "RGB", (LABEL_WIDTH + per_class * (thumb + 2), len(classes) * (thumb + 2)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(classes):
        rows = manifest[manifest["class_name"] == name].sort_values(
            ["split", "image_id"], ascending=[False, True]
        )
        top = row * (thumb + 2)
        draw.text((4, top + thumb // 2 - 6), name[:42], fill="black")
        for col, rel in enumerate(rows["path"].head(per_class)):
            with Image.open(root / rel) as im:
                tile = im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR)
            canvas.paste(tile, (LABEL_WIDTH + col * (thumb + 2), top))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, "PNG", optimize=True)
    return out


def grid_thumbnail_png(path: Path, max_width: int = 480) -> bytes:
    """A small PNG of the grid, for embedding in metadata."""
    with Image.open(path) as im:
        scale = min(1.0, max_width / im.width)
        small = im.resize(
            (max(1, int(im.width * scale)), max(1, int(im.height * scale))),
            Image.Resampling.LANCZOS,
        )
    buf = io.BytesIO()
    small.save(buf, "PNG", optimize=True)
    return buf.getvalue()
