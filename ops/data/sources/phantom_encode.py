"""Encode phantom pixels the way real downloads store them: 8- and 16-bit PNG, JPEG (also
CMYK), TIFF, BMP, palette PNG, PNG with alpha, DICOM with windowing tags and MONOCHROME1.

Every encoder is deterministic (no timestamps, UIDs derived from a seed) so the same seed gives
the same bytes.
"""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

Array = np.ndarray
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage, "CR": ComputedRadiographyImageStorage}


def to_uint8(img: Array) -> Array:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint16(img: Array, peak: int = 65535) -> Array:
    return np.round(np.clip(img, 0.0, 1.0) * peak).astype(np.uint16)


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


PNG_LEVEL = 3  # zlib level: files a little larger than the default 6, written much faster


def png8(img: Array) -> bytes:
    """Grey (H, W) or colour (H, W, 3) as an 8-bit PNG."""
    return pil_bytes(Image.fromarray(to_uint8(img)), "PNG", compress_level=PNG_LEVEL)


def png16(img: Array) -> bytes:
    """Grey as a 16-bit PNG, using only the lower 12 bits as detector data often does."""
    return pil_bytes(Image.fromarray(to_uint16(img, 4095)), "PNG", compress_level=PNG_LEVEL)


def tiff16(img: Array) -> bytes:
    return pil_bytes(Image.fromarray(to_uint16(img)), "TIFF")


def tiff8(img: Array) -> bytes:
    return pil_bytes(Image.fromarray(to_uint8(img)), "TIFF")


def jpeg(img: Array, quality: int = 92) -> bytes:
    return pil_bytes(Image.fromarray(to_uint8(img)), "JPEG", quality=quality)


def jpeg_cmyk(img: Array) -> bytes:
    """RGB converted to CMYK before JPEG encoding, as print-oriented tools export."""
    return pil_bytes(Image.fromarray(to_uint8(img)).convert("CMYK"), "JPEG", quality=92)


def bmp(img: Array) -> bytes:
    return pil_bytes(Image.fromarray(to_uint8(img)), "BMP")


def png_palette(img: Array, colours: int = 64) -> bytes:
    """Colour quantised to a palette ("P" mode), as web-optimised exports are."""
    return pil_bytes(
        Image.fromarray(to_uint8(img)).quantize(colours), "PNG", compress_level=PNG_LEVEL
    )


def png_alpha(img: Array) -> bytes:
    """RGBA with an opaque centre and a transparent vignette frame, as cut-outs arrive."""
    rgb = to_uint8(img)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    margin = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]).astype(np.float32)
    alpha = np.clip(margin / 6.0, 0.0, 1.0)
    rgba = np.dstack([rgb, np.round(alpha * 255).astype(np.uint8)])
    return pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG", compress_level=PNG_LEVEL)


def dicom(
    stored: Array,
    modality: str,
    uid_seed: str,
    *,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
    bits_stored: int = 12,
) -> bytes:
    """A single-frame grey DICOM file with explicit VR little endian pixel data.

    ``stored`` holds the raw stored values (uint16). ``window`` is (centre, width) in output
    units after ``rescale`` (slope, intercept); MONOCHROME1 means 0 displays as white, so the
    caller passes already inverted values.
    """
    sop_class = _SOP_CLASSES[modality]
    instance = generate_uid(entropy_srcs=[uid_seed, "instance"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = modality
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def zip_member(name: str, *, symlink: bool = False) -> zipfile.ZipInfo:
    """A ZipInfo with a fixed timestamp (reproducible archives); ``symlink`` marks a Unix
    symbolic link, whose data is the link target."""
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.create_system = 3  # Unix, so external_attr carries file mode bits
    mode = (stat.S_IFLNK | 0o777) if symlink else (stat.S_IFREG | 0o644)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info
