"""Cleaning raw sources into MedImgs: decoding, rejections, safety, dedup, split, invariants."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ops.config import load_params, stage_config
from ops.data import reasons
from ops.data.cleaning.build import build_medimgs, clean_raw
from ops.data.cleaning.checks import (
    accounting_problems,
    expected_keys,
    schema_problems,
    split_problems,
)
from ops.data.cleaning.decode import decode
from ops.data.cleaning.decoded import Rejected
from ops.data.cleaning.items import Outcome
from ops.data.cleaning.split import assign_splits
from ops.data.cleaning.tables import MANIFEST_COLUMNS, read_tables
from ops.data.prompts import build_prompt
from ops.data.sources import phantom_encode as enc
from ops.data.sources.materialize import materialize_raw_sources, materialize_specs
from ops.data.sources.phantoms import DUPLICATE, KEPT
from ops.data.sources.registry import ClassLabels, SourceSpec
from ops.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent
TEST_OVERRIDES = ["ingest.max_image_pixels=1000000", "ingest.workers=1"]


def micro(*overrides: str) -> dict:
    return load_params(
        REPO / "params.yaml", preset="micro", overrides=[*TEST_OVERRIDES, *overrides]
    )


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory) -> tuple[DataLayout, dict, dict]:
    """The micro phantom source, materialised and cleaned once for the module."""
    layout = DataLayout(tmp_path_factory.mktemp("cleaned") / "data")
    params = micro()
    raw = materialize_raw_sources(params, layout)
    return layout, raw, build_medimgs(params, layout)


def copy_raw(layout: DataLayout, tmp_path: Path) -> DataLayout:
    other = DataLayout(tmp_path / "copy")
    shutil.copytree(layout.raw, other.raw, symlinks=True)
    return other


def outcome_of(manifest, rejects, duplicates, source_file: str) -> str:
    if source_file in set(rejects["source_file"]):
        return rejects.set_index("source_file").loc[source_file, "reason"]
    if source_file in set(duplicates["source_file"]):
        return DUPLICATE
    return KEPT if source_file in set(manifest["source_file"]) else "missing"


def test_every_planted_defect_lands_where_planted(cleaned):
    layout, raw, _ = cleaned
    manifest, rejects, duplicates = read_tables(layout)
    planted = raw["sources"]["phantoms"]["planted"]
    assert len(planted) >= 20
    got = {f: outcome_of(manifest, rejects, duplicates, f) for f in planted}
    assert got == planted


def test_every_raw_file_and_member_is_accounted_exactly_once(cleaned):
    layout, _, summary = cleaned
    manifest, rejects, duplicates = read_tables(layout)
    assert accounting_problems(layout, manifest, rejects, duplicates) == []
    assert schema_problems(manifest, rejects, duplicates) == []
    index = pd.read_parquet(layout.raw_index)
    total = len(manifest) + len(rejects) + len(duplicates)
    assert total == summary["accounted"] == len(expected_keys(layout, index))
    assert len(index) < total  # archives were expanded into their members


def test_manifest_contract(cleaned, micro_params):
    layout, _, summary = cleaned
    manifest, _, _ = read_tables(layout)
    assert list(MANIFEST_COLUMNS) == list(manifest.columns)
    assert (
        manifest.groupby("class_name").size().eq(6).all() and manifest["class_name"].nunique() == 18
    )
    assert (manifest["width"] == 32).all() and (manifest["height"] == 32).all()
    template = micro_params["prompts"]["template"]
    assert all(row.prompt == build_prompt(row._asdict(), template) for row in manifest.itertuples())
    assert "X-ray of a human chest, cardiomegaly" in set(manifest["prompt"])
    holdout = set(manifest.loc[manifest["holdout"], "class_name"])
    assert holdout == {"dog_thorax_xray_normal", "dog_thorax_xray_cardiomegaly"}
    for rel in manifest["path"].head(20):
        with Image.open(layout.root / rel) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 32))
    assert summary["kept"] == len(manifest) and (layout.root / summary["sample_grid"]).is_file()


def test_every_format_and_variant_decodes(cleaned):
    layout, _, _ = cleaned
    manifest, _, _ = read_tables(layout)
    kept = dict(zip(manifest["source_file"], manifest["source_format"], strict=True))
    assert {"png", "jpeg", "tiff", "bmp", "dicom"} <= set(kept.values())
    variants = {
        "chest_xray/train/chest_xray_normal/IM-0000.png": "png",  # 16-bit
        "blood_smear/images/C2P0000_cell.png": "png",  # palette
        "blood_smear/images/C2P0001_cell.bmp": "bmp",
        "fundus/fundus_normal/0002_right.jpg": "jpeg",  # CMYK
        "fundus/fundus_normal/0003_left.tif": "tiff",
        "skin_lesions/skin_melanoma/ISIC_7800001.png": "png",  # RGBA
        "bone_xray/bone_xray_fracture/image1.tiff": "tiff",  # 16-bit
        "brain_mri.zip!Brain-MRI/brain_mri_glioma/Tr-0001.dcm": "dicom",  # MONOCHROME1
        "kidney_ct.zip!CT-KIDNEY/kidney_ct_stone/Image (2).dcm": "dicom",  # no window
        "dog_thorax/dog_thorax_normal/dog_0001.dcm": "dicom",  # no zip, CR
    }
    assert {f: kept.get(f) for f in variants} == variants


def test_dicom_polarity_makes_every_brain_background_dark(cleaned):
    layout, _, _ = cleaned
    manifest, _, _ = read_tables(layout)
    brains = manifest[manifest["class_name"].str.startswith("human_brain")]
    assert len(brains) == 12
    for rel in brains["path"]:
        pixels = np.asarray(Image.open(layout.root / rel).convert("L"), dtype=float)
        assert pixels[:3, :3].mean() < 40  # MONOCHROME1 inverted back: air is black


# decoding policy, file by file -----------------------------------------------------------------
def png_bytes(image: Image.Image, **options) -> bytes:
    return enc.pil_bytes(image, "PNG", **options)


def decoded_array(data: bytes, fmt: str) -> np.ndarray:
    return np.asarray(decode(data, fmt, 10_000_000).image, dtype=float)


def test_sixteen_bit_grey_is_stretched_to_full_range():
    ramp = np.tile(np.linspace(100, 4000, 64).astype(np.uint16), (8, 1))
    out = decoded_array(png_bytes(Image.fromarray(ramp)), "png")
    assert out.shape == (8, 64, 3) and out.min() == 0 and out.max() == 255


def test_alpha_and_palette_transparency_composite_over_black():
    rgba = Image.new("RGBA", (8, 8), (200, 100, 50, 0))
    assert decoded_array(png_bytes(rgba), "png").max() == 0
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    assert decoded_array(png_bytes(pal, transparency=1), "png").max() == 0
    assert decoded_array(png_bytes(pal), "png").min() == 250


def test_cmyk_jpeg_decodes_to_rgb_colours():
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 0.9
    out = decoded_array(enc.jpeg_cmyk(red), "jpeg")
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 40


def test_dicom_window_rescale_and_monochrome1():
    hu = np.array([[-1000, 40, 1000]], dtype=np.float32)
    stored = (hu + 1024).astype(np.uint16)
    ct = decoded_array(
        enc.dicom(stored, "CT", "t", window=(40, 400), rescale=(1.0, -1024.0)), "dicom"
    )
    assert ct[0, 0, 0] == 0 and 120 <= ct[0, 1, 0] <= 135 and ct[0, 2, 0] == 255
    ramp = np.array([[0, 2000, 4095]], dtype=np.uint16)
    m2 = decoded_array(enc.dicom(ramp, "MR", "t", window=(2048, 4096)), "dicom")[0, :, 0]
    m1 = decoded_array(enc.dicom(ramp, "MR", "t", monochrome1=True, window=(2048, 4096)), "dicom")[
        0, :, 0
    ]
    assert m2[0] < m2[2] and m1[0] > m1[2]  # MONOCHROME1: 0 shows white
    np.testing.assert_allclose(m1, 255 - m2, atol=1)


NOISE_PNG = png_bytes(
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
)
CORRUPTED_PNG = NOISE_PNG[:2000] + bytes(range(200)) + NOISE_PNG[2200:]


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (NOISE_PNG[: len(NOISE_PNG) // 2], "png", reasons.TRUNCATED),
        (CORRUPTED_PNG, "png", reasons.CORRUPT_IMAGE),
        (png_bytes(Image.new("1", (1100, 1000))), "png", reasons.DECOMPRESSION_BOMB),
        (b"just some words", "text", reasons.NOT_AN_IMAGE),
    ],
    ids=["truncated", "corrupt", "bomb", "text"],
)
def test_broken_bytes_are_rejected_with_a_reason(data, fmt, reason):
    with pytest.raises(Rejected) as caught:
        decode(data, fmt, 1_000_000)
    assert caught.value.reason == reason


# unsafe inputs ----------------------------------------------------------------------------------
def make_hostile_source(root: Path, outside_secret: Path) -> Path:
    """A folder source with good images, a symlink out of it, and a hostile zip."""
    good = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8))
    (root / "pneumonia").mkdir(parents=True)
    good.save(root / "pneumonia" / "a.png")
    good.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "pneumonia" / "b.png")
    os.symlink(outside_secret, root / "pneumonia" / "link.png")
    os.symlink(outside_secret.parent, root / "linked_folder")
    with zipfile.ZipFile(root / "normal.zip", "w") as zf:
        zf.writestr("normal/c.png", png_bytes(good.rotate(90)))
        zf.writestr("../../evil.png", png_bytes(good))
        zf.writestr("/abs/evil.png", png_bytes(good))
        zf.writestr(enc.zip_member("normal/link.png", symlink=True), "/etc/passwd")
        zf.writestr("normal/huge.bin", bytes(300_000))  # deflates to almost nothing
        zf.writestr("normal/bomb.png", png_bytes(Image.new("1", (1100, 1000))))
        zf.writestr("normal/strip.png", png_bytes(Image.new("L", (400, 4))))
        zf.writestr("normal/inner.zip", b"PK\x03\x04" + bytes(40))
    (root / "broken.zip").write_bytes(b"PK\x03\x04" + bytes(100))
    return root


def test_unsafe_inputs_are_rejected_and_nothing_escapes(tmp_path):
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (40, 40), "white").save(secret)
    source = make_hostile_source(tmp_path / "incoming", secret)
    layout = DataLayout(tmp_path / "data")
    before = {p for p in tmp_path.rglob("*") if layout.root not in p.parents}
    spec = SourceSpec(
        "hostile", "folder", str(source), default_labels={"modality": "X-ray", "body_part": "chest"}
    )
    cfg = {**stage_config(micro("ingest.max_file_bytes=200000"), "ingest")}
    materialize_specs([spec], layout, cfg)
    clean_raw(layout, cfg, "{modality} of a {species} {body_part}, {disease}")
    manifest, rejects, duplicates = read_tables(layout)
    got = dict(zip(rejects["source_file"], rejects["reason"], strict=True))
    assert got == {
        "pneumonia/link.png": reasons.SYMLINK,
        "linked_folder": reasons.SYMLINK,
        "normal.zip!../../evil.png": reasons.UNSAFE_PATH,
        "normal.zip!/abs/evil.png": reasons.UNSAFE_PATH,
        "normal.zip!normal/link.png": reasons.SYMLINK,
        "normal.zip!normal/huge.bin": reasons.FILE_TOO_LARGE,
        "normal.zip!normal/bomb.png": reasons.DECOMPRESSION_BOMB,
        "normal.zip!normal/strip.png": reasons.DEGENERATE_SIZE,
        "normal.zip!normal/inner.zip": reasons.NESTED_ARCHIVE,
        "broken.zip": reasons.CORRUPT_ARCHIVE,
    }
    assert sorted(manifest["source_file"]) == [
        "normal.zip!normal/c.png",
        "pneumonia/a.png",
        "pneumonia/b.png",
    ]
    assert set(manifest["prompt"]) == {
        "X-ray of a human chest, pneumonia",
        "X-ray of a human chest, normal",
    }
    assert accounting_problems(layout, manifest, rejects, duplicates) == []
    after = {p for p in tmp_path.rglob("*") if layout.root not in p.parents and p != layout.root}
    assert after == before  # nothing was written outside the data directory
    assert not list(tmp_path.parent.glob("evil.png")) and not Path("/abs/evil.png").exists()


# dedup and split --------------------------------------------------------------------------------
def test_exact_and_reencoded_copies_point_at_the_kept_original(cleaned):
    layout, _, _ = cleaned
    manifest, _, duplicates = read_tables(layout)
    original = manifest.set_index("source_file").loc[
        "chest_xray/train/chest_xray_normal/IM-0001.png"
    ]
    copies = duplicates[duplicates["duplicate_of"] == original["image_id"]]
    assert set(copies["source_format"]) == {"png", "bmp"}
    assert len(copies) == 3 and copies["same_class"].all()
    assert set(duplicates["source_format"]) >= {"tiff", "dicom"}


def fake_kept(n: int, class_name: str = "c") -> list[Outcome]:
    labels = ClassLabels(class_name, "human", "chest", "X-ray", "normal")
    return [Outcome("s", f"f{i}", image_id=f"{class_name}{i:04d}", labels=labels) for i in range(n)]


def test_cap_moves_overflow_to_test_and_split_is_seeded():
    kept = fake_kept(20) + fake_kept(3, "small")
    splits = assign_splits(kept, test_fraction=0.2, max_train_per_class=5, seed=0)
    big = [splits[o.image_id] for o in kept[:20]]
    assert big.count("train") == 5 and big.count("test") == 15
    assert [splits[o.image_id] for o in kept[20:]].count("test") == 1
    assert assign_splits(list(reversed(kept)), 0.2, 5, seed=0) == splits  # order-free
    assert assign_splits(kept, 0.2, 5, seed=1) != splits
    grown = assign_splits(fake_kept(21), 0.2, 100, seed=0)
    stable = assign_splits(fake_kept(20), 0.2, 100, seed=0)
    moved = [iid for iid, split in stable.items() if grown[iid] != split]
    assert len(moved) <= 1  # adding an image moves at most the one image at the boundary


def test_cap_end_to_end_and_no_test_image_in_train(cleaned, tmp_path):
    layout, _, _ = cleaned
    other = copy_raw(layout, tmp_path)
    cfg = stage_config(micro("ingest.max_train_per_class=2"), "ingest")
    clean_raw(other, cfg, "{modality} of a {species} {body_part}, {disease}")
    manifest, _, _ = read_tables(other)
    counts = manifest.groupby(["class_name", "split"]).size().unstack()
    assert (counts["train"] == 2).all() and (counts["test"] == 4).all()
    train, test = (set(manifest.loc[manifest["split"] == s, "image_id"]) for s in ("train", "test"))
    assert not train & test
    assert split_problems(other.root, manifest) == []


def test_worker_count_does_not_change_the_output(cleaned, tmp_path):
    layout, _, _ = cleaned
    other = copy_raw(layout, tmp_path)
    cfg = stage_config(micro(), "ingest")
    clean_raw(other, cfg, micro()["prompts"]["template"], workers=2)
    for mine, theirs in zip(read_tables(layout), read_tables(other), strict=True):
        pd.testing.assert_frame_equal(mine, theirs)
    manifest, _, _ = read_tables(layout)
    for rel in manifest["path"]:
        assert (layout.root / rel).read_bytes() == (other.root / rel).read_bytes()


def test_missing_raw_index_is_a_clear_error(layout, micro_params):
    with pytest.raises(FileNotFoundError, match="raw_sources first"):
        build_medimgs(micro_params, layout)


def test_archive_name_never_labels_a_member(tmp_path):
    """An image at the root of an ad-hoc zip has no class folder: unlabelled, not 'the zip'."""
    archive = tmp_path / "pneumonia.zip"
    image = Image.new("RGB", (40, 40), "gray")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("root.png", png_bytes(image))
    layout = DataLayout(tmp_path / "data")
    cfg = stage_config(micro(), "ingest")
    materialize_specs([SourceSpec("z", "zip", str(archive))], layout, cfg)
    clean_raw(layout, cfg, "{modality} of a {species} {body_part}, {disease}")
    _, rejects, _ = read_tables(layout)
    assert rejects[["source_file", "reason"]].values.tolist() == [
        ["pneumonia.zip!root.png", reasons.UNLABELLED]
    ]
