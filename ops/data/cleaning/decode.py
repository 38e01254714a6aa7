"""Decode one raw file's bytes into RGB pictures, or say precisely why not.

Supported: PNG (8/16-bit, palette, alpha), JPEG (also CMYK), TIFF (8/16-bit), BMP, GIF, WebP,
DICOM (``ops.data.cleaning.dicom``: every transfer syntax pydicom decodes with the pylibjpeg
plugins) and NIfTI-1/-2 volumes (``ops.data.cleaning.nifti``). Only these Pillow plugins may open a
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
``ops.data.cleaning.frames`` selects, each of which becomes its own image.
"""

from __future__ import annotations
import io
import warnings
from dataclasses import dataclass, field
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ops.data import reasons
from ops.data.cleaning.frames import FramePolicy
from ops.data.cleaning.decoded import DecodeOptions, Decoded, Frame, Rejected, broken, check_pixels, stretch
from ops.data.cleaning.dicom import decode_dicom
from ops.data.cleaning.nifti import decode_nifti

_GREY_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


PIL_FORMATS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WEBP",
}


def decode(data: bytes, fmt: str, options: DecodeOptions | int) -> Decoded:
    """Decode ``data`` whose sniffed format is ``fmt``; raise Rejected on any failure.

    ``options`` may be a bare ``max_image_pixels`` for the defaults of everything else."""
    if isinstance(options, int):
        options = DecodeOptions(options)
    if fmt == "dicom":
        return decode_dicom(data, options)
    if fmt == "nifti":
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
