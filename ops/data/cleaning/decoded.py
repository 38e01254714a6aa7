"""What every decoder returns and shares: the decoded frames, the options from ``ingest:``,
the rejection a file gets, and the pixel-count and contrast checks.

The format decoders (``decode`` for Pillow's formats, ``dicom``, ``nifti``) all build on this
module, and ``decode.decode`` dispatches to them, so no decoder imports the dispatcher.
"""

from __future__ import annotations
import io
import warnings
from dataclasses import dataclass, field
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ops.data import reasons
from ops.data.cleaning.frames import FramePolicy




# Frames of a multi-frame file or voxels of a volume may total this many times
# ``max_image_pixels`` (each frame on its own is held to ``max_image_pixels``).
VOLUME_PIXEL_FACTOR = 4


class Rejected(Exception):
    """A file that cannot become a MedImgs image; ``reason`` is one of ``reasons``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeOptions:
    """What decoding needs from ``ingest:`` (``params.yaml``)."""

    max_pixels: int  # ingest.max_image_pixels
    frames: FramePolicy = field(default_factory=FramePolicy)
    nifti_axis: int = 2  # of the RAS+ canonical volume: 0 sagittal, 1 coronal, 2 axial
    nifti_percentiles: tuple[float, float] = (1.0, 99.0)
    reject_burned_in: bool = True  # DICOM BurnedInAnnotation YES -> burned_in_annotation


@dataclass(frozen=True)
class Frame:
    image: Image.Image  # mode RGB
    index: int  # frame or slice index in the file (0 for a single picture)


@dataclass(frozen=True)
class Decoded:
    frames: tuple[Frame, ...]  # the kept frames, in index order; never empty
    width: int  # as stored in the file (one frame or slice)
    height: int
    frame_count: int = 1  # frames or slices the file holds

    @property
    def image(self) -> Image.Image:
        """The first kept picture: all there is for a single-frame file."""
        return self.frames[0].image


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise Rejected(reasons.CORRUPT_IMAGE, f"size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected(
            reasons.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels > ingest.max_image_pixels {max_pixels}",
        )


def stretch(values: np.ndarray) -> np.ndarray:
    """Linear map of the value range onto 0..255 (a constant image becomes black)."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def check_volume(voxels: int, max_pixels: int, what: str) -> None:
    """All frames or slices together are bounded too: a file is decoded whole in memory."""
    if voxels > VOLUME_PIXEL_FACTOR * max_pixels:
        raise Rejected(
            reasons.DECOMPRESSION_BOMB,
            f"{what}: {voxels} pixels > {VOLUME_PIXEL_FACTOR} x ingest.max_image_pixels",
        )


def grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """An 8-bit grey (H, W) or colour (H, W, 3) array as an RGB picture."""
    mode = "RGB" if grey.ndim == 3 else "L"
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8), mode).convert("RGB")


def broken(exc: BaseException) -> Rejected:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError) or "truncat" in text.lower():
        return Rejected(reasons.TRUNCATED, text)
    return Rejected(reasons.CORRUPT_IMAGE, text)
