"""Decode one raw file's bytes into an RGB picture, or say precisely why not.

Supported: PNG (8/16-bit, palette, alpha), JPEG (also CMYK), TIFF (8/16-bit), BMP, GIF, WebP and
uncompressed DICOM. Only these Pillow plugins may open a file (``formats=``), so a hostile file
can never reach an obscure decoder (EPS, for one, would start Ghostscript). The pixel count is
checked from the header before any pixel is decoded (decompression bombs).

Conversion policy, chosen so that every source looks the way a radiologist's viewer shows it:
- DICOM: stored values -> modality LUT (rescale slope/intercept, e.g. to Hounsfield units) ->
  the file's first VOI window (linear, DICOM PS3.3 C.11.2.1.2) or its VOI LUT, else the value
  range -> MONOCHROME1 inverted (0 shows white) -> 8 bits.
- 16-bit and float greys without a window: stretched from their minimum to their maximum, what
  viewers do by default for files that carry no display range.
- palette, CMYK, YCbCr: converted to RGB; alpha composited over black (the background of most
  medical images); EXIF orientation applied; multi-frame files give their first frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ops.data import reasons

PIL_FORMATS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WEBP",
}
_GREY_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class Rejected(Exception):
    """A file that cannot become a MedImgs image; ``reason`` is one of ``reasons``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # mode RGB
    width: int  # as stored in the file
    height: int


def decode(data: bytes, fmt: str, max_pixels: int) -> Decoded:
    """Decode ``data`` whose sniffed format is ``fmt``; raise Rejected on any failure."""
    if fmt == "dicom":
        return decode_dicom(data, max_pixels)
    if fmt not in PIL_FORMATS:
        raise Rejected(reasons.NOT_AN_IMAGE, f"content is {fmt}")
    return decode_pil(data, fmt, max_pixels)


def decode_pil(data: bytes, fmt: str, max_pixels: int) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, corrupt EXIF: handled here
        try:
            im = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
        except Image.DecompressionBombError as exc:
            raise Rejected(reasons.DECOMPRESSION_BOMB, str(exc)) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _broken(exc) from exc
        width, height = im.size
        check_pixels(width, height, max_pixels)
        try:
            im.load()
            im = exif_upright(im)
            rgb = to_rgb(im)
        except Rejected:
            raise
        except Exception as exc:  # any decoder failure is the file's fault, never a crash
            raise _broken(exc) from exc
    return Decoded(rgb, width, height)


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


def _broken(exc: BaseException) -> Rejected:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError) or "truncat" in text.lower():
        return Rejected(reasons.TRUNCATED, text)
    return Rejected(reasons.CORRUPT_IMAGE, text)


# DICOM ------------------------------------------------------------------------------------------
def decode_dicom(data: bytes, max_pixels: int) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about many harmless deviations
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            raise _broken(exc) from exc
        if "PixelData" not in ds:
            raise Rejected(reasons.NOT_AN_IMAGE, "DICOM object without pixel data")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise Rejected(
                reasons.CORRUPT_IMAGE, f"DICOM without usable Rows/Columns: {exc}"
            ) from exc
        check_pixels(cols, rows, max_pixels)
        if rows * cols * frames > 4 * max_pixels:
            raise Rejected(reasons.DECOMPRESSION_BOMB, f"{frames} frames of {cols}x{rows}")
        try:
            pixels = ds.pixel_array
        except (NotImplementedError, RuntimeError, ImportError) as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise Rejected(reasons.UNSUPPORTED_FORMAT, f"transfer syntax {syntax}: {exc}") from exc
        except Exception as exc:
            raise _dicom_broken(exc) from exc
        rgb = dicom_to_rgb(ds, pixels[0] if frames > 1 else pixels)
    return Decoded(rgb, cols, rows)


def _dicom_broken(exc: BaseException) -> Rejected:
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "less than expected" in lowered or ("length" in lowered and "expected" in lowered):
        return Rejected(reasons.TRUNCATED, text)  # pixel data shorter than Rows x Columns
    return _broken(exc)


def dicom_to_rgb(ds, pixels: np.ndarray) -> Image.Image:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour (pydicom has already converted YBR to RGB)
        if pixels.dtype != np.uint8:
            pixels = stretch(pixels)
        return Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    window = first_window(ds)
    if window is not None:
        grey = linear_window(values, *window)
    elif "VOILUTSequence" in ds:
        grey = stretch(apply_voi_lut(values, ds)).astype(np.float64) / 255.0
    else:
        grey = stretch(values).astype(np.float64) / 255.0
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return Image.fromarray(np.round(grey * 255.0).astype(np.uint8)).convert("RGB")


def first_window(ds) -> tuple[float, float] | None:
    """The first (centre, width) of WindowCenter/WindowWidth, which may be multi-valued."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        centre, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (centre, width) if width >= 1.0 else None


def _first_value(value) -> float:
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM linear VOI function onto [0, 1] (a width of 1 is a threshold at the centre)."""
    if width <= 1.0:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
