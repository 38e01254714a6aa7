"""Which class a raw file belongs to: its label CSV entry, else its nearest class folder.

Paths are source-relative; archive members are written ``archive.zip!member/path``. The archive's
own name never counts as a class folder, so a stray image at an archive's root is unlabelled
rather than silently labelled by the download's name.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from ops.data.sources.registry import ClassLabels, LabelCsv, SourceSpec


class LabelCsvError(ValueError):
    """A label CSV that lacks the configured columns."""


def split_source_file(source_file: str) -> tuple[str, str | None]:
    """``a/b.zip!c/d.png`` -> (``a/b.zip``, ``c/d.png``); plain files have no member."""
    outer, sep, member = source_file.partition("!")
    return outer, (member if sep else None)


def folder_names(source_file: str) -> list[str]:
    """Parent folder names of a file, nearest last (archive names excluded)."""
    outer, member = split_source_file(source_file)
    if member is None:
        return list(PurePosixPath(outer).parent.parts)
    return list(PurePosixPath(outer).parent.parts) + list(PurePosixPath(member).parent.parts)


def file_keys(name: str) -> list[str]:
    """Keys under which a CSV may name a file: full path, base name, stem (lower case)."""
    path = PurePosixPath(name.replace("\\", "/").strip().lower())
    return [k for k in dict.fromkeys([str(path), path.name, path.stem]) if k and k != "."]


def parse_label_csv(data: bytes, spec_csv: LabelCsv) -> dict[str, str]:
    """Map every file key of a label CSV to its label; rows without a label are skipped."""
    text = data.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in (spec_csv.file_column, spec_csv.label_column) if c not in columns]
    if missing:
        raise LabelCsvError(f"label CSV {spec_csv.path!r} lacks columns {missing}; has {columns}")
    table: dict[str, str] = {}
    for row in reader:
        name, label = (row.get(spec_csv.file_column) or ""), (row.get(spec_csv.label_column) or "")
        if name.strip() and label.strip():
            for key in file_keys(name):
                table.setdefault(key, label.strip())
    return table


def label_csv_for(spec: SourceSpec, source_file: str) -> LabelCsv | None:
    """The registry's label CSV entry that this file is, matched by base name."""
    outer, member = split_source_file(source_file)
    name = PurePosixPath(member if member is not None else outer).name.lower()
    for entry in spec.label_csvs:
        if PurePosixPath(entry.path).name.lower() == name:
            return entry
    return None


class LabelResolver:
    """Resolves a source file to its ClassLabels (or None) using the spec and its label CSVs."""

    def __init__(self, spec: SourceSpec, csv_tables: Iterable[Mapping[str, str]] = ()) -> None:
        self.spec = spec
        self.csv_labels: dict[str, str] = {}
        for table in csv_tables:
            for key, label in table.items():
                self.csv_labels.setdefault(key, label)

    def resolve(self, source_file: str) -> ClassLabels | None:
        outer, member = split_source_file(source_file)
        inner = member if member is not None else outer
        for key in file_keys(inner):
            if key in self.csv_labels:
                # A file the CSV names takes the CSV's word, even when that word is no class.
                return self.spec.lookup(self.csv_labels[key])
        for folder in reversed(folder_names(source_file)):
            labels = self.spec.lookup(folder)
            if labels is not None:
                return labels
        return None
