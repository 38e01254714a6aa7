"""Decode one raw file's bytes into RGB pictures, or say precisely why not.

Supported: PNG (8/16-bit, palette, alpha), JPEG (also CMYK), TIFF (8/16-bit), BMP, GIF, WebP,
DICOM (``ops.cleaning.dicom``: every transfer syntax pydicom decodes with the pylibjpeg
plugins) and NIfTI-1/-2 volumes (``ops.cleaning.nifti``). Only these Pillow plugins may open a
file (``formats=``), so a hostile file can never reach an obscure decoder (EPS, for one, would
start Ghostscript). The pixel count is checked from the header before any pixel is decoded
(decompression bombs).

Conversion policy, chosen so that every source looks the way a radiologist's viewer shows it:
- DICOM and NIfTI: see their modules (modality LUT, VOI window, MONOCHROME1; percentile window).
- 16-bit and float greys without a window: stretched from their minimum to their maximum, what
  viewers do by default for files that carry no display range.
- palette, CMYK, YCbCr: converted to RGB; alpha composited over black (the background of most
  medical images); EXIF orientation applied; multi-page Pillow files give their first page.

A decoded file is one or more frames: multi-frame DICOM and volumes are cut into the frames
``ops.cleaning.frames`` selects, each of which becomes its own image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ops.cleaning import reasons
from ops.cleaning.frames import FramePolicy

PIL_FORMATS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WEBP",
}
_GREY_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
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


def decode(data: bytes, fmt: str, options: DecodeOptions | int) -> Decoded:
    """Decode ``data`` whose sniffed format is ``fmt``; raise Rejected on any failure.

    ``options`` may be a bare ``max_image_pixels`` for the defaults of everything else."""
    if isinstance(options, int):
        options = DecodeOptions(options)
    if fmt == "dicom":
        from ops.cleaning.dicom import decode_dicom

        return decode_dicom(data, options)
    if fmt == "nifti":
        from ops.cleaning.nifti import decode_nifti

        return decode_nifti(data, options)
    if fmt not in PIL_FORMATS:
        raise Rejected(reasons.NOT_AN_IMAGE, f"content is {fmt}")
    return decode_pil(data, fmt, options.max_pixels)


def decode_pil(data: bytes, fmt: str, max_pixels: int) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, corrupt EXIF: handled here
        try:
            im = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
        except Image.DecompressionBombError as exc:
            raise Rejected(reasons.DECOMPRESSION_BOMB, str(exc)) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise broken(exc) from exc
        width, height = im.size
        check_pixels(width, height, max_pixels)
        try:
            im.load()
            im = exif_upright(im)
            rgb = to_rgb(im)
        except Rejected:
            raise
        except Exception as exc:  # any decoder failure is the file's fault, never a crash
            raise broken(exc) from exc
    return Decoded((Frame(rgb, 0),), width, height)


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise Rejected(reasons.CORRUPT_IMAGE, f"size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected(
            reasons.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels > ingest.max_image_pixels {max_pixels}",
        )


def exif_upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block leaves the picture as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # EXIF is metadata: its corruption must not cost the image
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (see the module docstring for the policy)."""
    if im.mode in _GREY_HIGH_DEPTH:
        return Image.fromarray(stretch(np.asarray(im, dtype=np.float64))).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


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
