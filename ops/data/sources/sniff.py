"""Guess a file's format from its first bytes, never from its name.

Downloads arrive with wrong extensions (a PNG saved as ``.jpg``), so both the raw index and the
decoder trust the content. The name is used only as a tie-breaker for formats without a magic
number (plain text notes).
"""

from __future__ import annotations

from pathlib import PurePosixPath

# Number of leading bytes ``guess_format`` needs: a DICOM file's "DICM" tag sits at offset 128.
HEAD_BYTES = 132

IMAGE_FORMATS = frozenset({"png", "jpeg", "tiff", "bmp", "gif", "webp", "dicom"})
ARCHIVE_FORMATS = frozenset({"zip"})
TEXT_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".yaml", ".yml"})


def guess_format(head: bytes, name: str = "", size: int | None = None) -> str:
    """Return a short format name: an image format, ``zip``, ``empty``, ``text`` or ``unknown``."""
    if size == 0 or not head:
        return "empty"
    magic = _by_magic(head)
    if magic:
        return magic
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".dcm" and len(head) >= 8:
        return "dicom"  # DICOM without the 128-byte preamble; the decoder reads it forced.
    if _looks_like_text(head) or suffix in TEXT_SUFFIXES:
        return "text"
    return "unknown"


def _by_magic(head: bytes) -> str | None:
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
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"\x00\x05\x16\x07":
        return "appledouble"  # macOS resource fork stub ("._name", "__MACOSX/")
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")  # a multi-byte character cut by the head
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)
