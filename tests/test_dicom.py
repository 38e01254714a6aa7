"""DICOM ingestion on the real test files pydicom ships: sniffing, every transfer syntax its
plugins decode, rendering as pydicom renders, lossless twins, and rejections with reasons.

Only files present in the installed wheel are used (some of pydicom's test files are only
downloadable; nothing is downloaded here)."""

from __future__ import annotations

import os
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_voi_lut

from ops.data import reasons
from ops.data.cleaning.decode import decode
from ops.data.cleaning.decoded import DecodeOptions, Rejected
from ops.data.cleaning.dicom import first_window
from ops.data.cleaning.frames import FramePolicy
from ops.data.sources.sniff import HEAD_BYTES, guess_format

DATA_ROOT = os.path.dirname(get_testdata_file("MR_small.dcm"))
ALL_FRAMES = DecodeOptions(50_000_000, FramePolicy("all"))
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


@cache
def pixel_files() -> dict[str, str]:
    """name (relative to pydicom's test data) -> path, for every present file with pixels."""
    found = {}
    for path in sorted({p for p in get_testdata_files() if os.path.isfile(p)}):
        try:
            ds = read(path)
        except Exception:
            continue
        if any(k in ds for k in PIXEL_KEYWORDS):
            found[os.path.relpath(path, DATA_ROOT)] = path
    return found


@cache
def reference_pixels(name: str) -> np.ndarray | None:
    """pydicom's own decoding of the file (with whatever plugins are installed), or None."""
    ds = read(pixel_files()[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ds.pixel_array
        except Exception:
            return None


def decodable() -> list[str]:
    return [n for n in pixel_files() if reference_pixels(n) is not None]


def undecodable() -> list[str]:
    return [n for n in pixel_files() if reference_pixels(n) is None]


def frames_of(name: str, options: DecodeOptions = ALL_FRAMES) -> np.ndarray:
    decoded = decode(Path(pixel_files()[name]).read_bytes(), "dicom", options)
    return np.stack([np.asarray(f.image, dtype=np.float64) for f in decoded.frames])


def test_pydicom_ships_enough_files_to_test_with():
    syntaxes = {str(read(p).file_meta.get("TransferSyntaxUID", "")) for p in pixel_files().values()}
    assert len(decodable()) >= 40
    assert {
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    } <= syntaxes


# sniffing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_tiff_header_in_the_preamble_is_still_dicom(name):
    data = Path(get_testdata_file(name)).read_bytes()
    assert data[:4] in (b"II*\x00", b"MM\x00*")  # the preamble holds a TIFF header
    assert guess_format(data[:HEAD_BYTES], "scan.tif", len(data)) == "dicom"
    assert decode(data, "dicom", ALL_FRAMES).frame_count == 1


def test_dicom_without_preamble_decodes_the_same_pixels():
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    bare = data[132:]  # no preamble, no DICM: the file meta group comes first
    assert guess_format(bare[:HEAD_BYTES], "IM0001.dcm", len(bare)) == "dicom"
    full = np.asarray(decode(data, "dicom", ALL_FRAMES).image)
    np.testing.assert_array_equal(np.asarray(decode(bare, "dicom", ALL_FRAMES).image), full)


def test_every_present_dicom_is_sniffed_as_dicom():
    for name, path in pixel_files().items():
        data = Path(path).read_bytes()
        assert guess_format(data[:HEAD_BYTES], os.path.basename(path), len(data)) == "dicom", name


# decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", decodable())
def test_every_file_pydicom_decodes_is_decoded(name):
    ds = read(pixel_files()[name])
    decoded = decode(Path(pixel_files()[name]).read_bytes(), "dicom", ALL_FRAMES)
    assert (decoded.width, decoded.height) == (int(ds.Columns), int(ds.Rows))
    assert decoded.frame_count == int(ds.get("NumberOfFrames", 1) or 1)
    for frame in decoded.frames:
        assert frame.image.mode == "RGB" and frame.image.size == (decoded.width, decoded.height)


@pytest.mark.parametrize("name", undecodable())
def test_what_pydicom_cannot_decode_is_rejected_naming_the_syntax(name):
    ds = read(pixel_files()[name])
    with pytest.raises(Rejected) as caught:
        decode(Path(pixel_files()[name]).read_bytes(), "dicom", ALL_FRAMES)
    assert caught.value.reason in reasons.ALL
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed and "Rows" in ds:
        assert caught.value.reason == reasons.UNSUPPORTED_FORMAT
        assert str(syntax) in caught.value.detail


def test_truncated_pixel_data_is_truncated():
    with pytest.raises(Rejected) as caught:
        decode(Path(get_testdata_file("MR_truncated.dcm")).read_bytes(), "dicom", ALL_FRAMES)
    assert caught.value.reason == reasons.TRUNCATED


def test_cut_compressed_file_is_rejected_not_crashed():
    data = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes()
    with pytest.raises(Rejected) as caught:
        decode(data[: len(data) * 2 // 3], "dicom", ALL_FRAMES)
    assert caught.value.reason in reasons.ALL


# rendering against pydicom ----------------------------------------------------------------------
def pydicom_grey(ds, stored: np.ndarray) -> np.ndarray:
    """pydicom's modality LUT and VOI on one frame, brought onto 0..255 by the VOI output range
    pydicom itself reports (the window applied to values far outside it)."""
    values = apply_modality_lut(stored, ds)
    if first_window(ds) is not None:
        shown = apply_voi_lut(values, ds, prefer_lut=False)
        lo, hi = apply_voi_lut(np.array([-1e12, 1e12]), ds, prefer_lut=False)
        grey = (shown - lo) / (hi - lo)
    elif ds.get("VOILUTSequence"):
        shown = apply_voi(np.round(values).astype(np.int64), ds).astype(np.float64)
        item = ds.VOILUTSequence[0]
        first, entries = item.LUTDescriptor[1], item.LUTDescriptor[0] or 2**16
        table = apply_voi(np.arange(first, first + entries), ds)
        grey = (shown - table.min()) / max(1.0, float(np.ptp(table)))
    else:
        values = values.astype(np.float64)
        spread = float(np.ptp(values))
        grey = (values - values.min()) / spread if spread > 0 else np.zeros(values.shape)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        grey = 1.0 - grey
    return np.round(grey * 255.0)


def pydicom_colour(ds, stored: np.ndarray) -> np.ndarray:
    """pydicom's RGB (YBR already converted, palettes through their LUT) on 0..255 by the
    nominal sample depth."""
    if str(ds.PhotometricInterpretation) == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)[..., :3]
        return np.round(rgb.astype(np.float64) * 255.0 / np.iinfo(rgb.dtype).max)
    top = 2 ** int(ds.BitsStored) - 1
    return np.round(stored[..., :3].astype(np.float64) * 255.0 / top)


def rendered_reference(name: str) -> list[np.ndarray]:
    ds = read(pixel_files()[name])
    pixels = reference_pixels(name)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    frames = pixels if count > 1 else pixels[np.newaxis]
    colour = int(ds.get("SamplesPerPixel", 1)) > 1 or "PALETTE" in str(
        ds.get("PhotometricInterpretation", "")
    )
    return [pydicom_colour(ds, f) if colour else pydicom_grey(ds, f) for f in frames]


@pytest.mark.parametrize("name", decodable())
def test_rendering_matches_pydicom(name):
    ours = frames_of(name)
    reference = rendered_reference(name)
    decoded = decode(Path(pixel_files()[name]).read_bytes(), "dicom", ALL_FRAMES)
    for frame, picture in zip(decoded.frames, ours, strict=True):
        expected = reference[frame.index]
        if expected.ndim == 2:
            expected = np.repeat(expected[..., np.newaxis], 3, axis=2)
        assert np.abs(picture - expected).max() <= 1.0, f"{name} frame {frame.index}"


def test_monochrome1_renders_inverted():
    names = [
        n for n in decodable() if read(pixel_files()[n]).PhotometricInterpretation == "MONOCHROME1"
    ]
    assert names
    for name in names:
        ds = read(pixel_files()[name])
        ours = frames_of(name)[0][..., 0]
        values = apply_modality_lut(reference_pixels(name), ds).astype(np.float64)
        assert np.corrcoef(ours.ravel(), values.ravel())[0, 1] < 0  # high values show dark


# lossless and lossy twins -----------------------------------------------------------------------
LOSSLESS_TWINS = {
    "MR_small.dcm": [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
    "SC_rgb_rle.dcm": [
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_gdcm_KY.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_32bit.dcm",
    ],
    "SC_rgb_rle_2frame.dcm": ["SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm"],
    "rtdose.dcm": ["rtdose_rle.dcm", "rtdose_expb.dcm"],
    "liver_1frame.dcm": ["liver_expb_1frame.dcm"],
    "SC_rgb_small_odd.dcm": ["SC_rgb_small_odd_big_endian.dcm"],
}
LOSSY_TWINS = {
    "SC_rgb_rle.dcm": [
        "SC_rgb_dcmtk_+eb+cr.dcm",
        "SC_rgb_dcmtk_+eb+cy+n1.dcm",
        "SC_rgb_dcmtk_+eb+cy+n2.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
        "SC_rgb_dcmtk_+eb+cy+s4.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_rgb_jls_lossy_sample.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
    ],
    "SC_rgb_small_odd.dcm": ["SC_rgb_small_odd_jpeg.dcm"],
    "SC_rgb_jpeg_dcmd.dcm": ["SC_rgb_jpeg.dcm", "SC_jpeg_no_color_transform.dcm"],
}
LOSSY_MEAN_TOLERANCE = 4.0  # grey levels of 255, averaged over the picture


def present_pairs(groups: dict[str, list[str]]) -> list[tuple[str, str]]:
    files = {os.path.basename(n): n for n in pixel_files()}
    return [(files[a], files[b]) for a, bs in groups.items() for b in bs if {a, b} <= set(files)]


@pytest.mark.parametrize(("original", "twin"), present_pairs(LOSSLESS_TWINS))
def test_lossless_twin_gives_the_same_pixels(original, twin):
    np.testing.assert_array_equal(frames_of(twin), frames_of(original))


@pytest.mark.parametrize(("original", "twin"), present_pairs(LOSSY_TWINS))
def test_lossy_twin_comes_within_tolerance(original, twin):
    ours, theirs = frames_of(twin), frames_of(original)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() <= LOSSY_MEAN_TOLERANCE


def test_twins_are_present_for_every_kind_of_compression():
    syntaxes = {
        str(read(pixel_files()[twin]).file_meta.TransferSyntaxUID)
        for _, twin in present_pairs(LOSSLESS_TWINS)
    }
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"} <= syntaxes
    assert "1.2.840.10008.1.2.4.90" in syntaxes and "1.2.840.10008.1.2.2" in syntaxes
