"""Guess a file's format from its first bytes, never from its name.

Downloads arrive with wrong extensions (a PNG saved as ``.jpg``), so both the raw index and the
decoder trust the content. The name is used only as a tie-breaker for formats without a magic
number (plain text notes, DICOM without its preamble, a gzipped NIfTI whose header the first
bytes do not reach).

DICOM comes first: the standard lets its 128-byte preamble hold anything, and tools put a TIFF
header there (pydicom's own ``CT_small.dcm``), so ``DICM`` at offset 128 outranks every other
signature.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import PurePosixPath

# Leading bytes ``guess_format`` reads: enough for DICOM's "DICM" at offset 128, NIfTI-1's
# magic at offset 344 and, gzipped, for the compressed stream to reach that magic.
HEAD_BYTES = 1024

IMAGE_FORMATS = frozenset({"png", "jpeg", "tiff", "bmp", "gif", "webp", "dicom", "nifti"})
# Recognised image formats MedImgs cannot read: rejected as unsupported, not as "not an image".
UNSUPPORTED_IMAGE_FORMATS = frozenset({"nifti_pair"})
ARCHIVE_FORMATS = frozenset({"zip"})
TEXT_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".yaml", ".yml"})


def guess_format(head: bytes, name: str = "", size: int | None = None) -> str:
    """Return a short format name: an image format, ``zip``, ``empty``, ``text`` or ``unknown``."""
    if size == 0 or not head:
        return "empty"
    magic = _by_magic(head)
    if magic == "gzip":
        return _gzipped(head, name)
    if magic:
        return magic
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".dcm" and len(head) >= 8:
        return "dicom"  # DICOM without the 128-byte preamble; the decoder reads it forced.
    if _looks_like_text(head) or suffix in TEXT_SUFFIXES:
        return "text"
    return "unknown"


def _by_magic(head: bytes) -> str | None:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    nifti = nifti_kind(head)
    if nifti:
        return nifti
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"\x00\x05\x16\x07":
        return "appledouble"  # macOS resource fork stub ("._name", "__MACOSX/")
    return None


def nifti_kind(head: bytes) -> str | None:
    """``nifti`` for a single-file NIfTI-1/-2 header, ``nifti_pair`` for the header of a
    ``.hdr``/``.img`` pair (NIfTI ``ni1``/``ni2``), None otherwise. Either byte order."""
    if len(head) < 8:
        return None
    for order in "<>":
        size = struct.unpack_from(f"{order}i", head)[0]
        if size == 348 and len(head) >= 348:
            magic = head[344:348]
            if magic == b"n+1\x00":
                return "nifti"
            if magic == b"ni1\x00":
                return "nifti_pair"
        if size == 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return "nifti" if head[5:6] == b"+" else "nifti_pair"
    return None


def _gzipped(head: bytes, name: str) -> str:
    """A gzip stream: ``nifti`` when it inflates to a NIfTI header (or is named ``.nii.gz``
    and too short to tell), else ``gzip``."""
    try:
        inner = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16).decompress(head, 544)
    except zlib.error:
        inner = b""
    if nifti_kind(inner) == "nifti":
        return "nifti"
    if len(inner) < 348 and name.lower().endswith(".nii.gz"):
        return "nifti"  # the decoder reads the whole stream and says what is wrong with it
    return "gzip"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")  # a multi-byte character cut by the head
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)
