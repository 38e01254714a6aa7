"""The per-file work of cleaning, run in worker processes: read (size-bounded, links refused),
sniff, decode, normalise, hash, stage the JPEG under its content id.

A file gives one Outcome when it is rejected, and one per kept frame otherwise (a multi-frame
DICOM or a volume may keep several slices, each its own image with its ``frame_index``).

Workers only write into the staging folder, one file per image id (written under a temporary
name and renamed, so two workers staging the same pixels cannot interleave). Everything else
is returned as an Outcome for the parent to order, deduplicate and split deterministically.
"""

from __future__ import annotations

import errno
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ops.data import reasons
from ops.data.cleaning.decode import decode
from ops.data.cleaning.decoded import DecodeOptions, Rejected
from ops.data.cleaning.items import Outcome, WorkItem
from ops.data.cleaning.normalize import fit_square, image_id, jpeg_bytes
from ops.data.sources.labels import split_source_file
from ops.data.sources.sniff import HEAD_BYTES, IMAGE_FORMATS, UNSUPPORTED_IMAGE_FORMATS, guess_format


@dataclass(frozen=True)
class DecodeSettings:
    resolution: int
    jpeg_quality: int
    max_file_bytes: int
    staging: str  # folder for <image_id>.jpg
    decode: DecodeOptions  # pixel limit, frame policy, NIfTI slicing, burned-in annotations

    @property
    def max_image_pixels(self) -> int:
        return self.decode.max_pixels


def process_chunk(items: list[WorkItem], settings: DecodeSettings) -> list[Outcome]:
    """Process items that share an archive (or none), opening the archive once."""
    archives: dict[str, zipfile.ZipFile] = {}
    try:
        return [o for item in items for o in _process_one(item, settings, archives)]
    finally:
        for zf in archives.values():
            zf.close()


def _process_one(
    item: WorkItem, settings: DecodeSettings, archives: dict[str, zipfile.ZipFile]
) -> list[Outcome]:
    try:
        data = read_item(item, settings.max_file_bytes, archives)
        return decode_item(item, data, settings)
    except Rejected as rej:
        return [Outcome(item.source, item.source_file, rej.reason, rej.detail)]
    except Exception as exc:  # whatever a hostile file does, it costs one rejection only
        detail = f"{type(exc).__name__}: {exc}"
        return [Outcome(item.source, item.source_file, reasons.CORRUPT_IMAGE, detail)]


def read_item(item: WorkItem, max_bytes: int, archives: dict[str, zipfile.ZipFile]) -> bytes:
    """The item's bytes, at most ``max_bytes`` (a zip member's declared size may lie)."""
    if item.member_index is None:
        data = read_file_nofollow(item.path, max_bytes + 1)
    else:
        try:
            zf = archives.get(item.path) or archives.setdefault(
                item.path, zipfile.ZipFile(item.path)
            )
            with zf.open(zf.infolist()[item.member_index]) as fh:
                data = fh.read(max_bytes + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise Rejected(
                reasons.CORRUPT_ARCHIVE, f"member unreadable: {type(exc).__name__}: {exc}"
            ) from exc
    if len(data) > max_bytes:
        raise Rejected(reasons.FILE_TOO_LARGE, f"over ingest.max_file_bytes ({max_bytes})")
    return data


def read_file_nofollow(path: str, limit: int) -> bytes:
    """Read a file, refusing a symlink even if one appeared after indexing."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected(reasons.SYMLINK, "symbolic link: not followed") from exc
        raise Rejected(reasons.UNREADABLE, f"{type(exc).__name__}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit)


def decode_item(item: WorkItem, data: bytes, settings: DecodeSettings) -> list[Outcome]:
    """The kept frames of one file, in frame order; raises Rejected for the whole file."""
    name = PurePosixPath(split_source_file(item.source_file)[-1] or item.source_file).name
    fmt = guess_format(data[:HEAD_BYTES], name, len(data))
    if fmt == "empty":
        raise Rejected(reasons.EMPTY_FILE)
    if fmt == "zip":
        raise Rejected(reasons.NESTED_ARCHIVE, "archives inside archives are not expanded")
    if fmt in UNSUPPORTED_IMAGE_FORMATS:
        raise Rejected(reasons.UNSUPPORTED_FORMAT, UNSUPPORTED_DETAIL.get(fmt, fmt))
    if fmt not in IMAGE_FORMATS:
        raise Rejected(reasons.NOT_AN_IMAGE, f"content is {fmt}")
    decoded = decode(data, fmt, settings.decode)
    for frame in decoded.frames:
        check_shape(*frame.image.size)
    if item.labels is None:
        raise Rejected(reasons.UNLABELLED, f"a {fmt} image no class folder or label CSV names")
    outcomes = []
    for frame in decoded.frames:
        square = fit_square(frame.image, settings.resolution)
        iid = image_id(square)
        stage_jpeg(Path(settings.staging), iid, jpeg_bytes(square, settings.jpeg_quality))
        outcomes.append(
            Outcome(
                item.source,
                item.source_file,
                image_id=iid,
                source_format=fmt,
                orig_width=decoded.width,
                orig_height=decoded.height,
                labels=item.labels,
                frame_index=frame.index,
                frame_count=decoded.frame_count,
            )
        )
    return outcomes


UNSUPPORTED_DETAIL = {
    "nifti_pair": "header of a NIfTI .hdr/.img pair: pairs are not read, convert them to .nii",
}


MIN_SIDE = 8
MAX_ASPECT = 10.0


def check_shape(width: int, height: int) -> None:
    """A 1-pixel line or a 40:1 strip cannot give a meaningful centre square (and scaling its
    short side up would allocate a huge intermediate image)."""
    short, long = sorted((width, height))
    if short < MIN_SIDE or long / short > MAX_ASPECT:
        raise Rejected(reasons.DEGENERATE_SIZE, f"{width}x{height}")


def stage_jpeg(staging: Path, iid: str, data: bytes) -> None:
    target = staging / f"{iid}.jpg"
    if target.exists():
        return
    tmp = staging / f"{iid}.{os.getpid()}.part"
    tmp.write_bytes(data)
    os.replace(tmp, target)
