"""DICOM files -> RGB frames, rendered the way a radiologist's viewer shows them.

Decoding: pydicom with its pixel data plugins (pylibjpeg with libjpeg, openjpeg and rle, and
pydicom's own numpy, RLE and deflate decoders) covers uncompressed (also big-endian and
deflated), RLE, JPEG baseline, extended 12-bit and lossless, JPEG-LS, JPEG 2000 and HTJ2K. A
file none of them can decode is rejected as ``unsupported_format``, naming its transfer syntax.

Rendering policy, per frame:
- grey: stored values -> modality LUT (rescale slope/intercept, e.g. to Hounsfield units, or a
  Modality LUT Sequence) -> the first VOI window (DICOM PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT
  or SIGMOID) or else the first VOI LUT, else the frame's value range -> MONOCHROME1 inverted
  (0 shows white) -> 8 bits. Enhanced multi-frame files carry rescale and window per frame in
  their functional groups; those take precedence over the top-level attributes.
- colour: palette colour through its LUT; YBR converted to RGB by pydicom; more than 8 bits per
  sample scaled by the sample depth (not stretched, which would shift the colours).
- overlays (60xx,3000) are not drawn: they often hold annotations, which MedImgs must not learn.

Privacy: no header value leaves this module except the pixels; rejection details are scrubbed
of identifying values (``ops.data.cleaning.deidentify``). A file whose header says
``BurnedInAnnotation: YES`` has text (often a name or date) in its pixels and is rejected as
``burned_in_annotation`` unless ``ingest.reject_burned_in_annotation`` is false.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ops.data import reasons
from ops.data.cleaning.decoded import Decoded, DecodeOptions, Frame, Rejected, broken, check_pixels, check_volume, grey_to_rgb, stretch
from ops.data.cleaning.deidentify import identifying_values, scrub
from ops.data.cleaning.frames import select_rendered

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Copied per frame from the functional groups into the attributes rendering reads.
_FRAME_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}
_DISPLAY_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


def decode_dicom(data: bytes, options: DecodeOptions) -> Decoded:
    """Decode a DICOM file's selected frames; every failure is a scrubbed Rejected."""
    with quiet_pydicom():
        ds = read_dataset(data)
        try:
            return decode_dataset(ds, options)
        except Rejected as rej:
            raise Rejected(rej.reason, scrub(rej.detail, identifying_values(ds))) from None
        except Exception as exc:  # whatever pydicom raises, its text may quote the header
            rej = broken(exc)
            raise Rejected(rej.reason, scrub(rej.detail, identifying_values(ds))) from None


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No pydicom warning or log record while a file is read: pydicom logs every warning
    (``warn_and_log``), and its warnings quote element values ("invalid value for VR DA:
    '19410923x'"), which would put header values into the run's logs."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def read_dataset(data: bytes):
    """Parse the header (and keep the pixel data bytes) from memory.

    Files with the 128-byte preamble and ``DICM`` are read strictly; files without it (old
    ACR-NEMA style, or a preamble stripped by some tool) are read forced."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        return pydicom.dcmread(io.BytesIO(data), force=not preamble)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise Rejected(
            broken(exc).reason, f"DICOM header unreadable: {type(exc).__name__}"
        ) from exc


def decode_dataset(ds, options: DecodeOptions) -> Decoded:
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise Rejected(reasons.NOT_AN_IMAGE, "DICOM object without pixel data")
    check_burned_in(ds, options.reject_burned_in)
    rows, cols, count = dimensions(ds)
    check_pixels(cols, rows, options.max_pixels)
    check_volume(rows * cols * count, options.max_pixels, f"{count} frames of {cols}x{rows}")
    pixels = decode_pixels(ds, count)
    kept = select_rendered(
        count, lambda index: render_frame(ds, pixels[index], index), options.frames
    )
    if not kept:
        raise Rejected(reasons.EMPTY_VOLUME, f"all {count} frames are one grey")
    frames = tuple(Frame(grey_to_rgb(picture), index) for index, picture in kept)
    return Decoded(frames, cols, rows, count)


def check_burned_in(ds, reject: bool) -> None:
    """Pixels that carry text the header says identifies (PS3.3 C.7.6.1.1.7)."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if reject and value == "YES":
        raise Rejected(
            reasons.BURNED_IN_ANNOTATION,
            "BurnedInAnnotation is YES (see ingest.reject_burned_in_annotation)",
        )


def dimensions(ds) -> tuple[int, int, int]:
    """(rows, columns, frames) from the header, before any pixel is decoded."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Rejected(
            reasons.CORRUPT_IMAGE, f"DICOM without usable Rows/Columns: {type(exc).__name__}"
        ) from exc
    if count < 1:
        raise Rejected(reasons.CORRUPT_IMAGE, f"NumberOfFrames is {count}")
    return rows, cols, count


def transfer_syntax(ds) -> str:
    """``name (uid)`` of the file's transfer syntax, for rejection details."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "unknown (no TransferSyntaxUID)"
    name = getattr(uid, "name", "") or ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def decode_pixels(ds, count: int) -> np.ndarray:
    """All frames as one array, frames first: (frames, rows, cols[, samples])."""
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        if _is_short(text):
            raise Rejected(reasons.TRUNCATED, _first_line(text)) from exc
        raise Rejected(
            reasons.UNSUPPORTED_FORMAT,
            f"transfer syntax {transfer_syntax(ds)}: {_first_line(text)}",
        ) from exc
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        reason = reasons.TRUNCATED if _is_short(text) else broken(exc).reason
        raise Rejected(reason, _first_line(text)) from exc
    return pixels if count > 1 else pixels[np.newaxis]


def _is_short(text: str) -> bool:
    lowered = text.lower()
    return "less than expected" in lowered or "truncat" in lowered


def _first_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:limit]


def render_frame(ds, pixels: np.ndarray, index: int) -> np.ndarray:
    """One frame as 8-bit grey (H, W) or RGB (H, W, 3), see the module docstring."""
    view = display_view(ds, index)
    photometric = str(view.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return scale_samples(apply_color_lut(pixels, ds)[..., :3], None)
    if pixels.ndim == 3:  # colour (pydicom has already converted YBR to RGB)
        return scale_samples(pixels[..., :3], view.get("BitsStored"))
    grey = window_grey(view, pixels)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return np.round(grey * 255.0).astype(np.uint8)


def display_view(ds, index: int):
    """The attributes rendering reads, with frame ``index``'s functional groups applied."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in _DISPLAY_KEYWORDS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for groups in _frame_groups(ds, index):
        for sequence, keywords in _FRAME_GROUPS.items():
            items = groups.get(sequence) or []
            for keyword in keywords:
                if items and keyword in items[0]:
                    setattr(view, keyword, items[0][keyword].value)
    return view


def _frame_groups(ds, index: int) -> list:
    """Shared then per-frame functional group items (the per-frame ones win)."""
    found = []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if shared:
        found.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index < len(per_frame):
        found.append(per_frame[index])
    return found


def scale_samples(samples: np.ndarray, bits_stored) -> np.ndarray:
    """Colour samples to 8 bits by their nominal depth (a palette's LUT: its dtype)."""
    if samples.dtype == np.uint8:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return stretch(samples)
    depth = int(bits_stored) if bits_stored else 8 * samples.dtype.itemsize
    top = float(2 ** min(depth, 8 * samples.dtype.itemsize) - 1)
    values = samples.astype(np.float64) * (255.0 / top)
    return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def window_grey(view, pixels: np.ndarray) -> np.ndarray:
    """Stored grey values -> display values in [0, 1] (modality LUT, then VOI)."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, view), dtype=np.float64)
    window = first_window(view)
    if window is not None:
        return voi_function(values, *window, str(view.get("VOILUTFunction", "LINEAR")))
    if view.get("VOILUTSequence"):
        return voi_lut(values, view)
    return stretch(values).astype(np.float64) / 255.0


def first_window(ds) -> tuple[float, float] | None:
    """The first (centre, width) of WindowCenter/WindowWidth, which may be multi-valued."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        centre, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(centre) and np.isfinite(width)):
        return None
    return (centre, width) if width >= 1.0 else None


def _first_value(value) -> float:
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def voi_function(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """DICOM VOI LUT functions (PS3.3 C.11.2.1.2-3) onto [0, 1]."""
    function = function.strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - centre) / width, -700.0, 700.0)))
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    return linear_window(values, centre, width)


def linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM linear VOI function onto [0, 1] (a width of 1 is a threshold at the centre)."""
    if width <= 1.0:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def voi_lut(values: np.ndarray, view) -> np.ndarray:
    """The first VOI LUT, its output scaled by the range of the LUT's own entries."""
    from pydicom.pixels import apply_voi

    item = view.VOILUTSequence[0]
    entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
    table = np.asarray(apply_voi(np.arange(first, first + entries), view), dtype=np.float64)
    mapped = np.asarray(apply_voi(np.round(values).astype(np.int64), view), dtype=np.float64)
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return np.zeros(values.shape)
    return np.clip((mapped - lo) / (hi - lo), 0.0, 1.0)
