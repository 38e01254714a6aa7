"""Turn the raw index into work: one item per raw file or archive member to decode, plus the
outcomes that need no decoding (symlinks, zip-slip members, oversize, excluded, label CSVs).

Archives are listed, never extracted: members are read into memory by name-independent index,
so a member called ``../../etc/x`` can never be written anywhere. Each member gets the source
file key ``archive.zip!member`` (``#2`` etc. when an archive repeats a name).
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.data import reasons
from ops.data.sources.labels import (
    LabelCsvError,
    LabelResolver,
    label_csv_for,
    parse_label_csv,
    split_source_file,
)
from ops.data.sources.registry import ClassLabels, SourceSpec

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class WorkItem:
    """A file (``member_index`` None) or archive member to decode."""

    source: str
    source_file: str
    path: str  # absolute path of the file, or of the archive holding the member
    member_index: int | None
    labels: ClassLabels | None


@dataclass(frozen=True)
class Outcome:
    """What became of one raw file or member, or of one frame of it: kept (``reason`` None)
    or rejected. A rejection covers the whole file (no frame); a file that is kept gives one
    Outcome per kept frame or slice, told apart by ``frame_index``."""

    source: str
    source_file: str
    reason: str | None = None
    detail: str = ""
    image_id: str | None = None
    source_format: str | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    labels: ClassLabels | None = None
    frame_index: int = 0  # frame or slice of a multi-frame file or volume (0 for 2D images)
    frame_count: int = 1  # frames or slices the file holds

    @property
    def key(self) -> tuple[str, str, int]:
        """The order of outcomes: by file, then by frame."""
        return (self.source, self.source_file, self.frame_index)


@dataclass(frozen=True)
class Candidate:
    source_file: str
    path: Path
    member_index: int | None
    size: int


def is_unsafe_member(name: str) -> bool:
    """Absolute paths, drive letters and ``..`` segments would escape an extraction folder."""
    norm = name.replace("\\", "/")
    return (
        norm.startswith("/")
        or bool(_DRIVE.match(norm))
        or "\x00" in norm
        or ".." in norm.split("/")
    )


def list_archive(rel: str, path: Path) -> list[tuple[str, zipfile.ZipInfo, int]]:
    """(source file key, info, index) of every file member; raises zipfile.BadZipFile."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    seen: Counter[str] = Counter()
    members = []
    for index, info in enumerate(infos):
        if info.is_dir():
            continue
        seen[info.filename] += 1
        suffix = f"#{seen[info.filename]}" if seen[info.filename] > 1 else ""
        members.append((f"{rel}!{info.filename}{suffix}", info, index))
    return members


def enumerate_archive(
    source: str, rel: str, path: Path, max_file_bytes: int
) -> tuple[list[Candidate], list[Outcome]]:
    try:
        members = list_archive(rel, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        return [], [Outcome(source, rel, reasons.CORRUPT_ARCHIVE, f"{type(exc).__name__}: {exc}")]
    if not members:
        return [], [Outcome(source, rel, reasons.EMPTY_ARCHIVE)]
    candidates, early = [], []
    for key, info, index in members:
        mode = info.external_attr >> 16
        if is_unsafe_member(info.filename):
            early.append(
                Outcome(source, key, reasons.UNSAFE_PATH, "member escapes the archive folder")
            )
        elif stat.S_ISLNK(mode):
            early.append(Outcome(source, key, reasons.SYMLINK, "symbolic link member"))
        elif info.flag_bits & 0x1:
            early.append(Outcome(source, key, reasons.ENCRYPTED_MEMBER))
        elif info.file_size > max_file_bytes:
            early.append(
                Outcome(source, key, reasons.FILE_TOO_LARGE, f"{info.file_size} bytes declared")
            )
        else:
            candidates.append(Candidate(key, path, index, info.file_size))
    return candidates, early


def enumerate_source(
    spec: SourceSpec, root: Path, rows: Iterable[dict[str, Any]], max_file_bytes: int
) -> tuple[list[WorkItem], list[Outcome]]:
    """Work items and early outcomes of one source, from its raw index rows."""
    candidates: list[Candidate] = []
    early: list[Outcome] = []
    root = root.resolve()
    for row in rows:
        rel = str(row["path"])
        path = root / rel
        if not path.absolute().is_relative_to(root) or ".." in rel.split("/"):
            early.append(
                Outcome(spec.name, rel, reasons.UNSAFE_PATH, "index path outside the source")
            )
        elif row["format"] == "symlink" or path.is_symlink():
            early.append(Outcome(spec.name, rel, reasons.SYMLINK, "symbolic link: not followed"))
        elif row["format"] == "zip":
            found, rejected = enumerate_archive(spec.name, rel, path, max_file_bytes)
            candidates += found
            early += rejected
        else:
            candidates.append(Candidate(rel, path, None, int(row["size"])))
    tables, rest = [], []
    for cand in candidates:
        entry = label_csv_for(spec, cand.source_file)
        if entry is None:
            rest.append(cand)
            continue
        try:
            tables.append(parse_label_csv(read_candidate(cand, max_file_bytes), entry))
            early.append(
                Outcome(spec.name, cand.source_file, reasons.LABEL_FILE, "read for labels")
            )
        except (LabelCsvError, OSError, zipfile.BadZipFile, ValueError) as exc:
            early.append(
                Outcome(spec.name, cand.source_file, reasons.LABEL_FILE, f"unusable: {exc}")
            )
    resolver = LabelResolver(spec, tables)
    items = []
    for cand in rest:
        if cand.size > max_file_bytes:
            early.append(
                Outcome(spec.name, cand.source_file, reasons.FILE_TOO_LARGE, f"{cand.size} bytes")
            )
        elif spec.excludes(cand.source_file):
            early.append(Outcome(spec.name, cand.source_file, reasons.EXCLUDED, "matches exclude"))
        else:
            labels = resolver.resolve(cand.source_file)
            items.append(
                WorkItem(spec.name, cand.source_file, str(cand.path), cand.member_index, labels)
            )
    return items, early


def read_candidate(cand: Candidate, max_bytes: int) -> bytes:
    """Bytes of a small file the parent itself must read (label CSVs), size-bounded."""
    if cand.member_index is None:
        with open(cand.path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    else:
        with zipfile.ZipFile(cand.path) as zf, zf.open(zf.infolist()[cand.member_index]) as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{split_source_file(cand.source_file)[-1]} is over {max_bytes} bytes")
    return data
