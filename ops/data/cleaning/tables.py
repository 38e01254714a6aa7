"""The three MedImgs tables (manifest, rejects, duplicates): their columns, how they are built
from outcomes, and how they are read back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from ops.data.cleaning.items import Outcome
from ops.layout import DataLayout
from ops.data.prompts import build_prompt

MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",  # relative to the data directory
    "split": "string",  # train | test
    "species": "string",
    "body_part": "string",
    "modality": "string",
    "disease": "string",
    "class_name": "string",
    "prompt": "string",
    "width": "int64",  # of the stored JPEG (the preset's resolution)
    "height": "int64",
    "orig_width": "int64",  # of the raw file
    "orig_height": "int64",
    "source": "string",
    "source_file": "string",  # relative to raw/<source>/; "a.zip!member" for archive members
    "source_format": "string",  # sniffed from content, not from the file name
    "frame_index": "int64",  # frame of a multi-frame DICOM or slice of a volume; 0 for 2D
    "frame_count": "int64",  # frames or slices the raw file holds (1 for 2D)
    "holdout": "bool",  # held-out family: base training must filter it out
}
REJECT_COLUMNS: dict[str, str] = {
    "source": "string",
    "source_file": "string",
    "reason": "string",
    "detail": "string",
}
DUPLICATE_COLUMNS: dict[str, str] = {
    "source": "string",
    "source_file": "string",
    "duplicate_of": "string",  # image_id of the kept copy
    "class_name": "string",  # the duplicate's own class
    "same_class": "bool",  # False: the same pixels under two labels (worth a look)
    "source_format": "string",
    "frame_index": "int64",  # which frame of the raw file repeats the kept image
}


def image_path(split: str, class_name: str, image_id: str) -> str:
    return f"medimgs/images/{split}/{class_name}/{image_id}.jpg"


def manifest_frame(
    kept: Iterable[Outcome], splits: Mapping[str, str], template: str, resolution: int
) -> pd.DataFrame:
    rows = []
    for o in kept:
        labels = o.labels
        assert labels is not None and o.image_id is not None
        fields = {
            "species": labels.species,
            "body_part": labels.body_part,
            "modality": labels.modality,
            "disease": labels.disease,
        }
        split = splits[o.image_id]
        rows.append(
            {
                "image_id": o.image_id,
                "path": image_path(split, labels.class_name, o.image_id),
                "split": split,
                **fields,
                "class_name": labels.class_name,
                "prompt": build_prompt(fields, template),
                "width": resolution,
                "height": resolution,
                "orig_width": o.orig_width,
                "orig_height": o.orig_height,
                "source": o.source,
                "source_file": o.source_file,
                "source_format": o.source_format,
                "frame_index": o.frame_index,
                "frame_count": o.frame_count,
                "holdout": labels.holdout,
            }
        )
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype(MANIFEST_COLUMNS)
    return frame.sort_values(["split", "class_name", "image_id"], ignore_index=True)


def rejects_frame(outcomes: Iterable[Outcome]) -> pd.DataFrame:
    rows = [
        {"source": o.source, "source_file": o.source_file, "reason": o.reason, "detail": o.detail}
        for o in outcomes
        if o.reason is not None
    ]
    frame = pd.DataFrame(rows, columns=list(REJECT_COLUMNS)).astype(REJECT_COLUMNS)
    return frame.sort_values(["source", "source_file"], ignore_index=True)


def duplicates_frame(pairs: Iterable[tuple[Outcome, Outcome]]) -> pd.DataFrame:
    rows = []
    for dup, original in pairs:
        assert dup.labels is not None and original.labels is not None
        rows.append(
            {
                "source": dup.source,
                "source_file": dup.source_file,
                "duplicate_of": original.image_id,
                "class_name": dup.labels.class_name,
                "same_class": dup.labels.class_name == original.labels.class_name,
                "source_format": dup.source_format,
                "frame_index": dup.frame_index,
            }
        )
    frame = pd.DataFrame(rows, columns=list(DUPLICATE_COLUMNS)).astype(DUPLICATE_COLUMNS)
    return frame.sort_values(["source", "source_file", "frame_index"], ignore_index=True)


def read_tables(layout: DataLayout) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(manifest, rejects, duplicates) as written by the last cleaning run."""
    for path in (layout.manifest, layout.rejects, layout.duplicates):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: materialise medimgs_manifest first")
    return (
        pd.read_parquet(layout.manifest),
        pd.read_parquet(layout.rejects),
        pd.read_parquet(layout.duplicates),
    )
