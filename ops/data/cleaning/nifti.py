"""NIfTI-1 and NIfTI-2 volumes (``.nii``, ``.nii.gz``) -> RGB slices, through nibabel.

Policy, chosen so that slices of every collection look alike whatever scanner wrote them:
- the volume is reoriented to the closest canonical orientation (RAS+), so ``ingest.nifti_axis``
  means the same anatomy in every file: 2 (``axial``), 1 (``coronal``) or 0 (``sagittal``);
- a 4D (or higher) series gives its first volume (the reference: b0 of a diffusion series,
  the first time point of fMRI); 2D images are one slice;
- intensities are windowed between the ``ingest.nifti_percentiles`` (default 1 and 99) of the
  volume's finite voxels: NIfTI has no display window and MR intensities have no units, so a
  robust range is what viewers fall back to;
- slices are shown as radiology viewers show them (superior or anterior up, the patient's right
  on the image's left) and resampled to square pixels when voxels are not isotropic in the
  slice plane (a 1 x 5 mm coronal slice would otherwise be squashed);
- empty slices (one grey: outside the body, zero padding) are skipped and ``ingest.frame_policy``
  picks among the rest (``ops.data.cleaning.frames``); frame indices count slices along the axis of
  the canonical volume.

Safety: sizes are read from the header before any voxel is inflated, so a gzip bomb or a
header promising a huge volume is rejected before it costs memory; a header whose data runs
past the end of the file is ``truncated``; anything else nibabel refuses is ``corrupt_image``.
NIfTI pairs (``.hdr`` + ``.img``) are not read: the raw index sees one file at a time.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ops.data import reasons
from ops.data.cleaning.decoded import Decoded, DecodeOptions, Frame, Rejected, check_pixels, check_volume, grey_to_rgb
from ops.data.cleaning.frames import select_rendered

NIFTI1_HEADER = 348
NIFTI2_HEADER = 540
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
MAX_ASPECT_RESAMPLE = 8.0  # voxels more elongated than this are shown as stored
_GZIP = b"\x1f\x8b"


@dataclass(frozen=True)
class NiftiLayout:
    """What the header says about the data, read without nibabel (before inflating it)."""

    version: int  # 1 or 2
    shape: tuple[int, ...]
    bitpix: int
    vox_offset: int

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def end(self) -> int:
        """Bytes the file must hold: header, extensions, then every voxel."""
        return self.vox_offset + self.voxels * max(1, self.bitpix // 8)


def axis_index(value: int | str) -> int:
    """``ingest.nifti_axis`` as an array axis of the canonical volume."""
    if isinstance(value, str) and value.strip().lower() in AXES:
        return AXES[value.strip().lower()]
    if str(value).strip() in ("0", "1", "2"):
        return int(value)
    raise ValueError(f"ingest.nifti_axis {value!r} is not axial, coronal, sagittal, 0, 1 or 2")


def decode_nifti(data: bytes, options: DecodeOptions) -> Decoded:
    """Decode a NIfTI file's selected slices (see the module docstring)."""
    raw, layout = inflate(data, options.max_pixels)
    image = load_image(raw, layout.version)
    volume, zooms = canonical_volume(image)
    axis = options.nifti_axis if volume.shape[2] > 1 else 2
    plane = [a for a in range(3) if a != axis]
    width, height = volume.shape[plane[0]], volume.shape[plane[1]]
    check_pixels(width, height, options.max_pixels)
    lo, hi = percentile_window(volume, options.nifti_percentiles)
    spacing = (zooms[plane[0]], zooms[plane[1]])

    def render(index: int) -> np.ndarray:
        return display_slice(np.take(volume, index, axis=axis), lo, hi, spacing)

    count = volume.shape[axis]
    kept = select_rendered(count, render, options.frames)
    if not kept:
        raise Rejected(reasons.EMPTY_VOLUME, f"all {count} slices are one grey")
    return Decoded(tuple(Frame(grey_to_rgb(p), i) for i, p in kept), width, height, count)


def read_layout(head: bytes) -> NiftiLayout:
    """Parse sizes from a NIfTI-1 or -2 header of either byte order."""
    if len(head) < NIFTI1_HEADER:
        raise Rejected(reasons.TRUNCATED, f"NIfTI header of {len(head)} bytes")
    for order in "<>":
        size = struct.unpack_from(f"{order}i", head)[0]
        if size == NIFTI1_HEADER:
            dims = struct.unpack_from(f"{order}8h", head, 40)
            bitpix = struct.unpack_from(f"{order}h", head, 72)[0]
            offset = struct.unpack_from(f"{order}f", head, 108)[0]
            return _layout(1, dims, bitpix, offset)
        if size == NIFTI2_HEADER:
            if len(head) < NIFTI2_HEADER:
                raise Rejected(reasons.TRUNCATED, f"NIfTI-2 header of {len(head)} bytes")
            bitpix = struct.unpack_from(f"{order}h", head, 14)[0]
            dims = struct.unpack_from(f"{order}8q", head, 16)
            offset = struct.unpack_from(f"{order}q", head, 168)[0]
            return _layout(2, dims, bitpix, offset)
    raise Rejected(reasons.CORRUPT_IMAGE, "no NIfTI-1 or NIfTI-2 header size")


def _layout(version: int, dims, bitpix: int, offset: float) -> NiftiLayout:
    ndim = int(dims[0])
    shape = tuple(int(d) for d in dims[1 : ndim + 1])
    if not 1 <= ndim <= 7 or any(d < 1 for d in shape):
        raise Rejected(reasons.CORRUPT_IMAGE, f"NIfTI dim {list(dims)}")
    if bitpix <= 0 or not np.isfinite(offset) or offset < 0:
        raise Rejected(reasons.CORRUPT_IMAGE, f"NIfTI bitpix {bitpix}, vox_offset {offset}")
    header = NIFTI1_HEADER if version == 1 else NIFTI2_HEADER
    return NiftiLayout(version, shape, int(bitpix), max(int(offset), header))


def inflate(data: bytes, max_pixels: int) -> tuple[bytes, NiftiLayout]:
    """The uncompressed file, inflated only as far as its header says it reaches."""
    if not data.startswith(_GZIP):
        layout = read_layout(data[:NIFTI2_HEADER])
        check_volume(layout.voxels, max_pixels, f"NIfTI volume {layout.shape}")
        _check_complete(len(data), layout)
        return data, layout
    stream = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        head = stream.decompress(data, NIFTI2_HEADER)
        layout = read_layout(head)
        check_volume(layout.voxels, max_pixels, f"NIfTI volume {layout.shape}")
        rest = stream.decompress(stream.unconsumed_tail, max(0, layout.end - len(head)))
    except zlib.error as exc:
        raise Rejected(reasons.CORRUPT_IMAGE, f"gzip stream: {exc}") from exc
    raw = head + rest
    _check_complete(len(raw), layout)
    return raw, layout


def _check_complete(size: int, layout: NiftiLayout) -> None:
    if size < layout.end:
        raise Rejected(
            reasons.TRUNCATED, f"NIfTI data ends at byte {size}, header needs {layout.end}"
        )


def load_image(raw: bytes, version: int):
    """A nibabel image over the bytes in memory (nothing is read from or written to disk)."""
    import nibabel as nib

    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    try:
        image = klass.from_bytes(raw)
        dtype = image.get_data_dtype()
    except Exception as exc:  # nibabel's HeaderDataError, ImageFileError, ValueError...
        raise Rejected(reasons.CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    if dtype.kind not in "biuf":
        raise Rejected(reasons.UNSUPPORTED_FORMAT, f"NIfTI voxels of type {dtype}")
    return image


def canonical_volume(image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The first 3D volume in RAS+ orientation as float64, and its voxel sizes in mm."""
    import nibabel as nib

    try:
        if len(image.shape) >= 3:
            image = nib.as_closest_canonical(image)
        shape = image.shape
        index = (slice(None),) * min(3, len(shape)) + (0,) * max(0, len(shape) - 3)
        volume = np.asarray(image.dataobj[index], dtype=np.float64)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except Exception as exc:
        raise Rejected(reasons.CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    volume = volume.reshape(volume.shape + (1,) * (3 - volume.ndim))
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return volume, zooms


def percentile_window(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """(low, high) display range: the given percentiles of the finite voxels."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        raise Rejected(reasons.EMPTY_VOLUME, "no finite voxel")
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:  # mostly one value (a mask, a sparse map): fall back on the full range
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi


def display_slice(
    plane: np.ndarray, lo: float, hi: float, spacing: tuple[float, float]
) -> np.ndarray:
    """A (first axis, second axis) plane as an 8-bit picture, viewer-oriented, square pixels."""
    plane = np.nan_to_num(plane, nan=lo, posinf=hi, neginf=lo)
    grey = np.zeros(plane.shape) if hi <= lo else np.clip((plane - lo) / (hi - lo), 0.0, 1.0)
    picture = np.round(grey.T[::-1, ::-1] * 255.0).astype(np.uint8)
    return square_pixels(picture, *spacing)


def square_pixels(picture: np.ndarray, col_mm: float, row_mm: float) -> np.ndarray:
    """Resample so that a pixel is as wide as it is high, at the finer of the two spacings."""
    if not (col_mm > 0 and row_mm > 0 and np.isfinite(col_mm) and np.isfinite(row_mm)):
        return picture
    ratio = max(col_mm, row_mm) / min(col_mm, row_mm)
    if ratio < 1.01 or ratio > MAX_ASPECT_RESAMPLE:
        return picture
    finest = min(col_mm, row_mm)
    height, width = picture.shape
    size = (round(width * col_mm / finest), round(height * row_mm / finest))
    resized = Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized)
