"""The phantom source: deterministic, decidable, written the way real downloads arrive."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from ops.data import reasons
from ops.data.sources.phantoms import (
    CLASS_KEYS,
    DUPLICATE,
    KEPT,
    check_spec,
    draw_phantom,
    generate_phantoms,
)
from ops.data.sources.raw_index import walk_files
from ops.data.sources.registry import load_registry
from ops.data.sources.sniff import guess_format

SMALL_BOMB = 1_000_000  # max_image_pixels for tests: keeps the planted oversized PNG small


@pytest.fixture(scope="module")
def spec():
    return load_registry()["phantoms"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, spec) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("phantoms")
    return root, generate_phantoms(root, spec, per_class=6, seed=0, max_image_pixels=SMALL_BOMB)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {rel: Path(entry.path).read_bytes() for rel, entry in walk_files(root)}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, spec):
    trees = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_phantoms(
            tmp_path / name, spec, per_class=2, seed=seed, max_image_pixels=SMALL_BOMB
        )
        trees[name] = tree_bytes(tmp_path / name)
    assert trees["a"] == trees["b"]
    assert trees["c"].keys() == trees["a"].keys()
    changed = sum(trees["c"][k] != trees["a"][k] for k in trees["a"])
    assert changed > 0.8 * len(trees["a"])


def test_registry_covers_enough_classes_body_parts_modalities(spec):
    check_spec(spec)  # every registry key has a drawer and vice versa
    labels = list(spec.classes.values())
    base = [c for c in labels if not c.holdout]
    assert len(base) >= 16
    assert len({c.body_part for c in labels}) >= 6
    assert len({c.modality for c in labels}) >= 3
    assert {"human", "cattle", "dog"} <= {c.species for c in labels}
    assert {c.class_name for c in labels if c.holdout} == {
        "dog_thorax_xray_normal",
        "dog_thorax_xray_cardiomegaly",
    }


def bright_fraction(img: np.ndarray) -> float:
    return float((img > 0.75).mean())


def purple_fraction(img: np.ndarray) -> float:
    return float(((img[..., 2] > img[..., 1] + 0.15) & (img[..., 0] < 0.6)).mean())


def black_fraction(img: np.ndarray) -> float:
    return float((img.max(axis=-1) < 0.2).mean())


def stone_fraction(img: np.ndarray) -> float:
    return float((img > 0.62).mean())  # above ~840 HU: only calculi (bone is ~700 HU)


@pytest.mark.parametrize(
    ("healthy", "diseased", "statistic"),
    [
        ("brain_mri_no_tumor", "brain_mri_glioma", bright_fraction),
        ("uninfected", "parasitized", purple_fraction),
        ("skin_nevus", "skin_melanoma", black_fraction),
        ("kidney_ct_normal", "kidney_ct_stone", stone_fraction),
    ],
)
def test_class_is_decidable_by_a_simple_statistic(healthy, diseased, statistic):
    """A threshold on one measured number separates the classes on every sample."""
    ok = [statistic(draw_phantom(healthy, i, seed=3)) for i in range(12)]
    sick = [statistic(draw_phantom(diseased, i, seed=3)) for i in range(12)]
    assert max(ok) < min(sick)


def test_within_class_variety():
    images = [draw_phantom("chest_xray_normal", i, seed=0) for i in range(6)]
    assert all(a.shape == (144, 144) for a in images)
    diffs = [np.abs(images[0] - b).mean() for b in images[1:]]
    assert min(diffs) > 0.01  # pose, size, exposure and noise differ


def test_files_arrive_in_mixed_formats_and_modes(generated):
    root, _ = generated
    formats, modes, dicom_photometric = set(), set(), set()
    names = {}
    for rel, entry in walk_files(root):
        data = Path(entry.path).read_bytes()
        fmt = guess_format(data[:132], rel, len(data))
        formats.add(fmt)
        names[rel] = fmt
        if fmt in ("png", "jpeg", "tiff", "bmp"):
            with Image.open(io.BytesIO(data)) as im:
                modes.add((fmt, im.mode))
        if fmt == "zip":
            with zipfile.ZipFile(entry.path) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".dcm") and info.file_size > 1000:
                        ds = pydicom.dcmread(io.BytesIO(zf.read(info)), force=True)
                        if "PixelData" in ds:
                            dicom_photometric.add(str(ds.PhotometricInterpretation))
    assert {"png", "jpeg", "tiff", "bmp", "dicom", "zip", "empty", "text"} <= formats
    assert {
        ("png", "I;16"),
        ("png", "P"),
        ("png", "RGBA"),
        ("jpeg", "CMYK"),
        ("tiff", "I;16"),
    } <= modes
    assert {"MONOCHROME1", "MONOCHROME2"} <= dicom_photometric
    assert names["cattle/cattle_skin_healthy/0005.jpg"] == "png"  # wrong extension
    assert (root / "blood_smear" / "labels.csv").read_text().startswith("filename,label\n")


def test_planted_defects_cover_every_kind(generated):
    _, summary = generated
    outcomes = set(summary["planted"].values())
    expected = {
        reasons.TRUNCATED,
        reasons.EMPTY_FILE,
        reasons.NOT_AN_IMAGE,
        reasons.DECOMPRESSION_BOMB,
        reasons.UNSAFE_PATH,
        reasons.SYMLINK,
        reasons.UNLABELLED,
        reasons.LABEL_FILE,
        DUPLICATE,
        KEPT,
    }
    assert expected <= outcomes
    assert summary["images"] == 6 * len(CLASS_KEYS)


def test_too_few_images_per_class_is_a_clear_error(tmp_path, spec):
    with pytest.raises(ValueError, match="at least 2"):
        generate_phantoms(tmp_path, spec, per_class=1, seed=0, max_image_pixels=SMALL_BOMB)
