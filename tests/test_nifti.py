"""NIfTI ingestion on the example files nibabel ships: sniffing, reorientation, slicing with
the frame policy, percentile windowing, empty slices, and corrupt volumes."""

from __future__ import annotations

import gzip
import os
import struct
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from ops.data import reasons
from ops.data.cleaning.decode import decode
from ops.data.cleaning.decoded import DecodeOptions, Rejected
from ops.data.cleaning.frames import FramePolicy
from ops.data.sources.sniff import HEAD_BYTES, guess_format

DATA = Path(data_path)
ALL = DecodeOptions(50_000_000, FramePolicy("all"))


@cache
def nifti_files() -> list[str]:
    """Single-file NIfTI-1/-2 examples nibabel ships (CIFTI matrices excluded: not images)."""
    names = sorted(os.listdir(DATA))
    return [n for n in names if n.endswith((".nii", ".nii.gz")) and ".dconn." not in n]


def load(name: str):
    return nib.load(str(DATA / name))


def to_bytes(image, gz: bool = False) -> bytes:
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def frames(data: bytes, options: DecodeOptions = ALL) -> tuple[list[int], np.ndarray]:
    decoded = decode(data, "nifti", options)
    pictures = np.stack([np.asarray(f.image, dtype=np.float64) for f in decoded.frames])
    return [f.index for f in decoded.frames], pictures


def test_nibabel_ships_nifti1_nifti2_3d_4d_and_gzipped():
    versions = {type(load(n)).__name__ for n in nifti_files()}
    assert {"Nifti1Image", "Nifti2Image"} <= versions
    assert any(len(load(n).shape) == 4 for n in nifti_files())
    assert any(n.endswith(".nii.gz") for n in nifti_files())
    assert any(n.endswith(".nii") for n in nifti_files())


@pytest.mark.parametrize("name", nifti_files())
def test_examples_sniff_and_decode_along_the_canonical_axis(name):
    data = (DATA / name).read_bytes()
    assert guess_format(data[:HEAD_BYTES], name, len(data)) == "nifti"
    canonical = nib.as_closest_canonical(load(name))
    decoded = decode(data, "nifti", ALL)
    assert decoded.frame_count == canonical.shape[2]
    assert (decoded.width, decoded.height) == canonical.shape[:2]
    assert decoded.frames and all(f.image.mode == "RGB" for f in decoded.frames)


def test_pairs_and_other_gzip_are_told_apart():
    for name in ("nifti1.hdr", "nifti2.hdr"):
        head = (DATA / name).read_bytes()[:HEAD_BYTES]
        assert guess_format(head, name, 1) == "nifti_pair"
    mgz = (DATA / "test.mgz").read_bytes()
    assert guess_format(mgz[:HEAD_BYTES], "test.mgz", len(mgz)) == "gzip"


def reference_slices(image, percentiles=(1.0, 99.0)) -> dict[int, np.ndarray]:
    """Independent rendering of the axial slices from nibabel's canonical data: percentile
    window, superior-anterior up, patient's right on the image's left; empty ones left out."""
    data = np.asanyarray(nib.as_closest_canonical(image).dataobj, dtype=np.float64)
    data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    finite = data[np.isfinite(data)]
    lo, hi = np.percentile(finite, percentiles)
    grey = np.clip((np.nan_to_num(data, nan=lo) - lo) / (hi - lo), 0, 1)
    shown = {}
    for k in range(data.shape[2]):
        picture = np.round(np.rot90(grey[:, :, k], 1)[:, ::-1] * 255.0)
        if picture.max() > picture.min():
            shown[k] = picture
    return shown


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "reoriented_anat_moved.nii", "example4d.nii.gz"]
)
def test_slices_match_an_independent_rendering_and_skip_empty_ones(name):
    image = load(name)
    expected = reference_slices(image)
    indices, pictures = frames((DATA / name).read_bytes())
    assert indices == sorted(expected)  # every non-empty slice, no empty one
    for index, picture in zip(indices, pictures, strict=True):
        assert np.abs(picture[..., 0] - expected[index]).max() <= 1.0


def test_reorientation_gives_the_same_slices_whatever_the_stored_orientation():
    image = load("anatomical.nii")
    flipped = image.as_reoriented(np.array([[0, -1], [1, 1], [2, -1]]))  # LAS -> RAI
    assert nib.aff2axcodes(flipped.affine) != nib.aff2axcodes(image.affine)
    stored, reoriented = frames(to_bytes(image)), frames(to_bytes(flipped))
    assert stored[0] == reoriented[0]
    np.testing.assert_array_equal(stored[1], reoriented[1])


def test_gzip_and_nifti2_give_the_same_slices_as_plain_nifti1():
    image = load("anatomical.nii")
    plain = frames(to_bytes(image))
    as_nifti2 = nib.Nifti2Image(np.asanyarray(image.dataobj), image.affine)
    for other in (to_bytes(image, gz=True), to_bytes(as_nifti2), to_bytes(as_nifti2, gz=True)):
        assert guess_format(other[:HEAD_BYTES], "x", len(other)) == "nifti"
        got = frames(other)
        assert got[0] == plain[0]
        np.testing.assert_array_equal(got[1], plain[1])


def test_4d_series_gives_its_first_volume():
    image = load("example4d.nii.gz")
    first = nib.Nifti1Image(np.asanyarray(image.dataobj)[..., 0], image.affine, image.header)
    second = nib.Nifti1Image(np.asanyarray(image.dataobj)[..., 1], image.affine, image.header)
    series = frames((DATA / "example4d.nii.gz").read_bytes())
    np.testing.assert_array_equal(series[1], frames(to_bytes(first))[1])
    assert not np.array_equal(frames(to_bytes(second))[1], series[1])


def test_frame_policy_picks_among_non_empty_slices():
    data = (DATA / "reoriented_anat_moved.nii").read_bytes()
    every = frames(data)[0]
    pick = {
        policy: frames(data, DecodeOptions(50_000_000, FramePolicy(policy, 3)))[0]
        for policy in ("middle", "first", "every_k")
    }
    assert pick["middle"] == [every[(len(every) - 1) // 2]] and pick["middle"] != [0]
    assert pick["first"] == [every[0]]
    assert pick["every_k"] == every[::3]


def test_axis_and_percentiles_are_configurable():
    data = (DATA / "anatomical.nii").read_bytes()
    shape = nib.as_closest_canonical(load("anatomical.nii")).shape
    sagittal = decode(data, "nifti", DecodeOptions(50_000_000, FramePolicy("all"), nifti_axis=0))
    assert sagittal.frame_count == shape[0] and (sagittal.width, sagittal.height) == shape[1:]
    narrow = frames(data)[1]
    wide = frames(data, DecodeOptions(50_000_000, FramePolicy("all"), nifti_percentiles=(0, 100)))
    assert (narrow == 255).mean() > (wide[1] == 255).mean()  # 1-99 saturates the brightest 1%


def test_anisotropic_voxels_are_shown_with_square_pixels():
    image = load("functional.nii")  # 4 x 4 x 8 mm
    zooms = nib.as_closest_canonical(image).header.get_zooms()
    assert zooms[2] == 2 * zooms[0]
    coronal = decode(
        (DATA / "functional.nii").read_bytes(),
        "nifti",
        DecodeOptions(50_000_000, FramePolicy("all"), nifti_axis=1),
    )
    shape = nib.as_closest_canonical(image).shape
    assert coronal.frames[0].image.size == (shape[0], 2 * shape[2])


# corrupt volumes --------------------------------------------------------------------------------
ANATOMICAL = (DATA / "anatomical.nii").read_bytes()


def with_dims(data: bytes, dims: tuple[int, ...]) -> bytes:
    order = "<" if struct.unpack_from("<i", data)[0] == 348 else ">"
    return data[:40] + struct.pack(f"{order}8h", *dims) + data[56:]


def constant_volume(value: float) -> bytes:
    image = load("anatomical.nii")
    return to_bytes(nib.Nifti1Image(np.full(image.shape, value, np.float32), image.affine))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (ANATOMICAL[: len(ANATOMICAL) // 2], reasons.TRUNCATED),
        (gzip.compress(ANATOMICAL, mtime=0)[:5000], reasons.TRUNCATED),
        (ANATOMICAL[:200], reasons.TRUNCATED),
        (with_dims(ANATOMICAL, (9, 33, 41, 25, 1, 1, 1, 1)), reasons.CORRUPT_IMAGE),
        (with_dims(ANATOMICAL, (3, 33, -41, 25, 1, 1, 1, 1)), reasons.CORRUPT_IMAGE),
        (with_dims(ANATOMICAL, (4, 30000, 30000, 30000, 9, 1, 1, 1)), reasons.DECOMPRESSION_BOMB),
        (b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4, reasons.CORRUPT_IMAGE),
        (constant_volume(np.nan), reasons.EMPTY_VOLUME),
        (constant_volume(7.0), reasons.EMPTY_VOLUME),
    ],
    ids=[
        "cut",
        "cut-gzip",
        "cut-header",
        "ndim",
        "negative-dim",
        "bomb",
        "garbage-gzip",
        "nan",
        "flat",
    ],
)
def test_corrupt_volumes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as caught:
        decode(data, "nifti", ALL)
    assert caught.value.reason == reason


def test_gzip_bomb_is_refused_before_it_is_inflated():
    header = with_dims(ANATOMICAL[:352], (3, 20000, 20000, 20000, 1, 1, 1, 1))
    bomb = gzip.compress(header + bytes(20_000_000), mtime=0)  # 20 MB of zeros in 20 kB
    with pytest.raises(Rejected) as caught:
        decode(bomb, "nifti", DecodeOptions(1_000_000))
    assert caught.value.reason == reasons.DECOMPRESSION_BOMB
