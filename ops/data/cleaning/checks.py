"""Checks of a finished MedImgs build: schema, the accounting invariant, split hygiene.

Each returns a list of human-readable problems (empty when the check passes); the Dagster
asset checks and the tests call the same functions.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd

from ops.data.cleaning.items import list_archive
from ops.data.cleaning.tables import DUPLICATE_COLUMNS, MANIFEST_COLUMNS, REJECT_COLUMNS
from ops.layout import DataLayout

LABEL_FIELDS = ("species", "body_part", "modality", "disease", "class_name", "prompt")
MAX_LISTED = 5


def _listing(values) -> str:
    values = sorted(map(str, values))
    more = f" (+{len(values) - MAX_LISTED} more)" if len(values) > MAX_LISTED else ""
    return ", ".join(values[:MAX_LISTED]) + more


def schema_problems(
    manifest: pd.DataFrame, rejects: pd.DataFrame, duplicates: pd.DataFrame
) -> list[str]:
    problems = []
    for name, frame, columns in (
        ("manifest", manifest, MANIFEST_COLUMNS),
        ("rejects", rejects, REJECT_COLUMNS),
        ("duplicates", duplicates, DUPLICATE_COLUMNS),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            problems.append(f"{name} lacks columns {missing}")
    if problems:
        return problems
    bad_split = set(manifest["split"].dropna()) - {"train", "test"}
    if bad_split:
        problems.append(f"manifest has split values {sorted(bad_split)}")
    for column in (*LABEL_FIELDS, "image_id", "path", "split", "source", "source_file"):
        empty = manifest[column].isna() | (manifest[column].astype("string").str.strip() == "")
        if empty.any():
            problems.append(f"manifest column {column} is empty in {int(empty.sum())} rows")
    if not pd.api.types.is_bool_dtype(manifest["holdout"]):
        problems.append(f"manifest column holdout is {manifest['holdout'].dtype}, not bool")
    if manifest["image_id"].duplicated().any():
        problems.append("manifest repeats image ids")
    if rejects["reason"].isna().any():
        problems.append("rejects rows without a reason")
    unknown_dups = set(duplicates["duplicate_of"]) - set(manifest["image_id"])
    if unknown_dups:
        problems.append(
            f"duplicates point at image ids not in the manifest: {_listing(unknown_dups)}"
        )
    return problems


def expected_keys(layout: DataLayout, index: pd.DataFrame) -> set[tuple[str, str]]:
    """Every (source, source_file) cleaning must account for: each indexed file, with a
    readable archive replaced by its file members."""
    keys = set()
    for source, path, fmt in zip(index["source"], index["path"], index["format"], strict=True):
        if fmt == "zip":
            try:
                members = list_archive(path, layout.raw_source(source) / path)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                members = []
            if members:
                keys.update((source, key) for key, _, _ in members)
                continue
        keys.add((source, path))
    return keys


def accounting_problems(
    layout: DataLayout, manifest: pd.DataFrame, rejects: pd.DataFrame, duplicates: pd.DataFrame
) -> list[str]:
    """Every raw file and archive member lands in exactly one place: one row of rejects, or
    one or more kept frames, each frame once, in the manifest or the duplicates table.

    A 2D image is one frame, so for it this is "exactly one of kept, duplicate, rejected";
    a volume whose slices are kept is accounted for by those slices (each its own image)."""
    index = pd.read_parquet(layout.raw_index)
    rejected = Counter(zip(rejects["source"], rejects["source_file"], strict=True))
    frames: Counter[tuple[str, str, int]] = Counter()
    for frame in (manifest, duplicates):
        frame_index = frame["frame_index"] if "frame_index" in frame else [0] * len(frame)
        frames.update(zip(frame["source"], frame["source_file"], frame_index, strict=True))
    kept = {(s, f) for s, f, _ in frames}
    expected = expected_keys(layout, index)
    problems = []
    twice = [f"{s}:{f}" for (s, f), n in rejected.items() if n > 1]
    twice += [f"{s}:{f} frame {i}" for (s, f, i), n in frames.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} files or frames are listed twice: {_listing(twice)}")
    both = [f"{s}:{f}" for s, f in kept & set(rejected)]
    if both:
        problems.append(f"{len(both)} files are both rejected and kept: {_listing(both)}")
    accounted = kept | set(rejected)
    missing = [f"{s}:{f}" for s, f in expected - accounted]
    if missing:
        problems.append(f"{len(missing)} raw files are in no table: {_listing(missing)}")
    extra = [f"{s}:{f}" for s, f in accounted - expected]
    if extra:
        problems.append(f"{len(extra)} table rows match no raw file: {_listing(extra)}")
    return problems


def split_problems(root: Path, manifest: pd.DataFrame) -> list[str]:
    """No image in both splits; every path sits under its split and exists."""
    problems = []
    both = set(manifest.loc[manifest["split"] == "train", "image_id"]) & set(
        manifest.loc[manifest["split"] == "test", "image_id"]
    )
    if both:
        problems.append(f"{len(both)} images are in both splits: {_listing(both)}")
    misplaced = [
        p
        for p, s in zip(manifest["path"], manifest["split"], strict=True)
        if not str(p).startswith(f"medimgs/images/{s}/")
    ]
    if misplaced:
        problems.append(f"{len(misplaced)} paths are not under their split: {_listing(misplaced)}")
    absent = [p for p in manifest["path"] if not (root / str(p)).is_file()]
    if absent:
        problems.append(f"{len(absent)} manifest paths do not exist: {_listing(absent)}")
    return problems
