"""``raw/index.parquet``: one row per raw file of every materialised source.

Formats are guessed from content; labels are filled where the file's folder or a plain-file
label CSV names its class (members of archives are labelled by cleaning, which reads them).
Symbolic links are listed as ``symlink`` and never followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ops.data.sources.labels import LabelCsvError, LabelResolver, label_csv_for, parse_label_csv
from ops.data.sources.registry import SourceSpec
from ops.data.sources.sniff import HEAD_BYTES, guess_format

INDEX_COLUMNS = {
    "source": "string",
    "path": "string",
    "size": "int64",
    "format": "string",
    "class_name": "string",
    "species": "string",
    "body_part": "string",
    "modality": "string",
    "disease": "string",
    "holdout": "boolean",
}


def walk_files(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every file and symlink under ``root`` as (posix relative path, entry), sorted, without
    following links (a linked folder is listed as one symlink)."""
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((Path(entry.path), rel + "/"))
            else:
                yield rel, entry
        stack.extend(reversed(subdirs))


def scan_source(root: Path, spec: SourceSpec) -> list[dict[str, Any]]:
    """Index rows for the files of one materialised source."""
    files: list[tuple[str, int, str, Path]] = []
    for rel, entry in walk_files(root):
        if entry.is_symlink():
            files.append(
                (rel, entry.stat(follow_symlinks=False).st_size, "symlink", Path(entry.path))
            )
            continue
        size = entry.stat().st_size
        with open(entry.path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
        files.append((rel, size, guess_format(head, rel, size), Path(entry.path)))
    resolver = LabelResolver(spec, _plain_label_csvs(spec, files))
    rows = []
    for rel, size, fmt, _ in sorted(files):
        labels = None if fmt in ("symlink", "zip") else resolver.resolve(rel)
        rows.append(
            {
                "source": spec.name,
                "path": rel,
                "size": size,
                "format": fmt,
                "class_name": labels.class_name if labels else None,
                "species": labels.species if labels else None,
                "body_part": labels.body_part if labels else None,
                "modality": labels.modality if labels else None,
                "disease": labels.disease if labels else None,
                "holdout": labels.holdout if labels else None,
            }
        )
    return rows


def _plain_label_csvs(
    spec: SourceSpec, files: list[tuple[str, int, str, Path]]
) -> list[dict[str, str]]:
    tables = []
    for rel, _, fmt, path in files:
        entry = label_csv_for(spec, rel)
        if entry is not None and fmt == "text":
            try:
                tables.append(parse_label_csv(path.read_bytes(), entry))
            except LabelCsvError:
                continue  # cleaning records the unusable CSV; the index just lacks its labels
    return tables


def index_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    return frame.astype(INDEX_COLUMNS)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
