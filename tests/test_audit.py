"""The memorisation audit: copies of training images are flagged whatever edit hides them;
unseen real images of the same classes are not. Real files on disk, phantoms that differ as
real images do (``audit_fixtures``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from audit_fixtures import CLASSES, jpeg_again, mirrored, phantom, shifted, write_phantom_medimgs
from PIL import Image

from ops.config import REPO_ROOT
from ops.layout import DataLayout
from ops.privacy.audit import audit_folder, audit_images, summary_table
from ops.privacy.bank import calibrate, train_bank
from ops.privacy.nearest import nearest, unit_features
from ops.privacy.normalise import PixelSpec, bank_vectors, canonical_stack, query_variants
from ops.privacy.pairs import save_closest_pairs
from ops.privacy.threshold import reference_threshold
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EDITS = {
    "verbatim": lambda im: im,
    "mirrored": mirrored,
    "jpeg75": jpeg_again,
    "shift_2_3": lambda im: shifted(im, 2, 3),
    "shift_-3_-2": lambda im: shifted(im, -3, -2),
    "shift_0_3": lambda im: shifted(im, 0, 3),
}
UNSEEN_SEED = 7  # the fixture draws with seed 0: other seeds are other patients


@pytest.fixture(scope="module")
def medimgs(tmp_path_factory):
    """A phantom MedImgs (6 classes, 16 train + 8 test each), its bank and calibration."""
    layout = DataLayout(tmp_path_factory.mktemp("audit") / "data")
    rows = write_phantom_medimgs(layout)
    bank = train_bank(layout)
    return layout, rows, bank, calibrate(layout, bank)


def _train_pictures(layout, rows, every=4):
    picked = [r for r in rows if r["split"] == "train"][::every]
    return picked, [Image.open(layout.root / r["path"]).convert("RGB") for r in picked]


def test_copies_flagged_and_unseen_images_not(medimgs):
    layout, rows, bank, calibration = medimgs
    picked, originals = _train_pictures(layout, rows)
    images, files, classes, sources = [], [], [], []
    for row, original in zip(picked, originals, strict=True):
        for edit, fn in EDITS.items():
            images.append(fn(original))
            files.append(f"{edit}/{row['image_id']}.png")
            classes.append(row["class_name"])
            sources.append(row["path"])
    unseen = [(c, i) for c in CLASSES for i in range(4)]
    images += [phantom(c, i, UNSEEN_SEED) for c, i in unseen]
    files += [f"unseen/{c}_{i}.png" for c, i in unseen]
    classes += [c for c, _ in unseen]

    records = audit_images(images, files, bank, calibration, classes)
    copies, fresh = records[: len(sources)], records[len(sources) :]
    threshold = calibration.pixel.value
    for record, source in zip(copies, sources, strict=True):
        assert record["memorised"], record
        assert record["nearest_train_image"] == source, record
        # far below the threshold, not just under it: the margin is what makes this robust
        assert record["distance"] < threshold / 3, record
        assert record["reference_quantile"] == 0.0
    assert not any(r["memorised"] for r in fresh), [r for r in fresh if r["memorised"]]
    assert min(r["distance"] for r in fresh) > threshold
    table = summary_table({"copier": copies, "honest": fresh})
    honest_all = table[(table.model == "honest") & (table.class_name == "all")].iloc[0]
    copier_all = table[(table.model == "copier") & (table.class_name == "all")].iloc[0]
    assert (honest_all.n, honest_all.n_memorised) == (len(fresh), 0)
    assert copier_all.share_memorised == 1.0
    assert set(table[table.model == "copier"].class_name) == {"all", *CLASSES}


def test_reference_is_the_held_out_split(medimgs):
    layout, rows, bank, calibration = medimgs
    n_test = sum(r["split"] == "test" for r in rows)
    ref = calibration.pixel
    assert ref.n_reference == n_test and len(bank) == len(rows) - n_test
    assert ref.reference[0] <= ref.value <= np.percentile(ref.reference, 2)
    assert ref.percentile == 1.0 and calibration.feature is None


def test_threshold_percentile_and_quantiles():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.2, 0.6, 1000)
    t = reference_threshold(reference, percentile=5.0)
    assert t.value == pytest.approx(np.percentile(reference, 5.0))
    assert abs(t.flags(reference).mean() - 0.05) < 0.002  # the stated false-positive rate
    assert list(t.flags(np.array([0.0, t.value, 0.9]))) == [True, False, False]
    q = t.reference_quantile(np.array([0.0, np.median(reference), 1.0]))
    assert q[0] == 0.0 and q[1] == pytest.approx(0.5, abs=0.002) and q[2] == 1.0
    assert t.summary()["n_reference"] == 1000
    with pytest.raises(ValueError, match="at least"):
        reference_threshold(reference[:5])
    with pytest.raises(ValueError, match="percentile"):
        reference_threshold(reference, percentile=0.0)


def test_pixel_variants_undo_mirror_and_shift_exactly():
    """A mirrored copy shifted by 2 px at 64 px (one canonical pixel) is at distance ~0."""
    spec = PixelSpec()
    original = phantom("brain_mri_glioma", 0, 3)
    canon = canonical_stack([original, shifted(mirrored(original), 2, -2)], spec)
    variants = query_variants(canon[1:], spec)
    assert variants.shape == (1, spec.n_variants, spec.dim)
    found = nearest(variants, 1, bank_vectors(canon[:1], spec))
    assert found.distance[0] < 1e-3
    unrelated = canonical_stack([phantom("skin_nevus", 0, 3)], spec)
    far = nearest(query_variants(unrelated, spec), 1, bank_vectors(canon[:1], spec))
    assert far.distance[0] > 0.5


def test_feature_space_is_reported_beside_pixels(medimgs):
    """With a feature extractor, each record also carries its feature-space neighbour."""
    layout, rows, _, _ = medimgs

    def features(images):  # a fixed random projection of small grey thumbnails
        thumbs = np.stack(
            [np.asarray(im.convert("L").resize((16, 16)), np.float32) for im in images]
        )
        proj = np.random.default_rng(0).normal(size=(256, 32)).astype(np.float32)
        return thumbs.reshape(len(images), -1) @ proj

    bank = train_bank(layout, features=features)
    calibration = calibrate(layout, bank, features=features)
    assert calibration.feature is not None and bank.features.shape == (len(bank), 32)
    np.testing.assert_allclose(np.linalg.norm(unit_features(bank.features), axis=1), 1, atol=1e-5)
    picked, originals = _train_pictures(layout, rows, every=16)
    [record] = audit_images(originals[:1], ["copy.png"], bank, calibration, features=features)
    assert record["nearest_feature_train_image"] == picked[0]["path"]
    assert record["feature_distance"] < 1e-3 and record["memorised_feature"]


def _copier_folder(layout, rows, folder):
    """A folder another tool might have written: copies (as PNG and JPEG, in class folders),
    unseen images, a broken file and a text file."""
    picked, originals = _train_pictures(layout, rows, every=8)
    copies = {}
    for k, (row, original) in enumerate(zip(picked, originals, strict=True)):
        edit = list(EDITS)[k % len(EDITS)]
        path = folder / row["class_name"] / f"copy_{k}_{edit}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        EDITS[edit](original).save(path)
        copies[str(path.relative_to(folder))] = row["path"]
    shutil.copy(layout.root / picked[0]["path"], folder / "verbatim_bytes.jpg")
    copies["verbatim_bytes.jpg"] = picked[0]["path"]
    for i, c in enumerate(CLASSES):
        phantom(c, 20 + i, UNSEEN_SEED).save(folder / f"unseen_{i}.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image")
    return copies


def test_audit_folder_report(medimgs, tmp_path):
    layout, rows, bank, calibration = medimgs
    folder = tmp_path / "samples"
    copies = _copier_folder(layout, rows, folder)
    report = audit_folder(folder, bank, calibration)
    by_file = {r["file"]: r for r in report["images"]}
    assert set(by_file) == set(copies) | {f"unseen_{i}.jpg" for i in range(len(CLASSES))}
    for file, source in copies.items():
        assert by_file[file]["memorised"] and by_file[file]["nearest_train_image"] == source
    assert not any(r["memorised"] for f, r in by_file.items() if f.startswith("unseen"))
    assert {s["file"] for s in report["skipped"]} == {"broken.png", "notes.txt"}
    assert all(s["reason"].startswith("unreadable image") for s in report["skipped"])
    summary = report["summary"]
    assert (summary["n"], summary["n_memorised"], summary["n_skipped"]) == (
        len(by_file),
        len(copies),
        2,
    )
    assert summary["share_memorised"] == pytest.approx(len(copies) / len(by_file))
    assert summary["threshold"] == calibration.pixel.value and summary["percentile"] == 1.0
    labelled = {f.split("/")[0] for f in copies if "/" in f}  # class folders name the class
    assert set(summary["per_class"]) == labelled
    assert all(v["n_memorised"] == v["n"] for v in summary["per_class"].values())
    json.dumps(report)  # the report is plain JSON

    pairs = save_closest_pairs(
        report["images"],
        lambda r: Image.open(folder / r["file"]),
        layout,
        tmp_path / "pairs.png",
        n=4,
    )
    with Image.open(pairs) as sheet:
        assert sheet.size == (2 * (2 * 96 + 8), 2 * (96 + 14 + 4))
        assert np.asarray(sheet).std() > 10  # pictures, not a blank sheet


def test_llcm_audit_cli(medimgs, tmp_path):
    """``llcm audit DIR --out REPORT.json`` end to end, in a child process, writing nothing
    but the report and the pairs picture."""
    layout, rows, _, _ = medimgs
    folder = tmp_path / "samples"
    copies = _copier_folder(layout, rows, folder)
    before = sorted(p for p in layout.root.rglob("*"))
    out, pairs = folder / "report.json", tmp_path / "closest.png"  # a report inside DIR
    cmd = [sys.executable, "-m", "pipeline.cli", "audit", str(folder), "--out", str(out),
           "--pairs", str(pairs), "--data", str(layout.root)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout)["n_memorised"] == len(copies)
    flagged = {r["file"] for r in report["images"] if r["memorised"]}
    assert flagged == set(copies)
    assert all(
        {"file", "nearest_train_image", "distance", "memorised"} <= set(r) for r in report["images"]
    )
    assert "report.json" not in {r["file"] for r in report["images"]}
    assert pairs.is_file() and report["summary"]["pairs_picture"] == str(pairs)
    assert sorted(p for p in layout.root.rglob("*")) == before  # nothing written to the data


def test_llcm_audit_errors(tmp_path, capsys):
    """A missing folder or a data directory without MedImgs: one clear line, exit code 2."""
    empty = DataLayout(tmp_path / "empty")
    folder = tmp_path / "samples"
    folder.mkdir()
    assert main(["audit", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert (
        main(["audit", str(folder), "--out", str(tmp_path / "r.json"), "--data", str(empty.root)])
        == 2
    )
    assert "run `llcm ingest`" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
