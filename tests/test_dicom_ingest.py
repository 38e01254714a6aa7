"""``llcm ingest`` on folders of real DICOM and NIfTI files (pydicom's and nibabel's test data):
every decodable file kept, every file accounted for once, frames and slices as their own
images, burned-in annotations rejected, and no patient identifier in any output."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file, get_testdata_files

from ops.data import reasons
from ops.data.cleaning.checks import (
    accounting_problems,
    expected_keys,
    schema_problems,
    split_problems,
)
from ops.data.cleaning.decode import decode
from ops.data.cleaning.decoded import DecodeOptions, Rejected
from ops.data.cleaning.deidentify import identifying_values, scrub
from ops.data.cleaning.frames import FramePolicy
from ops.data.cleaning.items import Outcome
from ops.data.cleaning.split import assign_splits
from ops.data.cleaning.tables import read_tables
from ops.data.cleaning.worker import MAX_ASPECT, MIN_SIDE
from ops.data.sources.registry import ClassLabels
from ops.layout import DataLayout
from pipeline.cli import main

DATA_ROOT = Path(get_testdata_file("MR_small.dcm")).parent
NIBABEL = Path(data_path)
BASE = ["--preset", "micro", "--workers", "1", "--modality", "CT", "--body-part", "chest"]


def ingest(folder: Path, out: Path, *settings: str) -> dict:
    argv = ["ingest", str(folder), "--out", str(out), *BASE]
    for setting in ("ingest.max_image_pixels=50000000", *settings):
        argv += ["--set", setting]
    assert main(argv) == 0
    return argv


def pydicom_decodes(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True).pixel_array is not None
        except Exception:
            return False


def flat_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)).replace(os.sep, "__")


def outcomes_by_file(layout: DataLayout) -> dict[str, str]:
    manifest, rejects, duplicates = read_tables(layout)
    got = {f: "kept" for f in manifest["source_file"]}
    got.update({f: "duplicate" for f in duplicates["source_file"] if f not in got})
    got.update(dict(zip(rejects["source_file"], rejects["reason"], strict=True)))
    return got


def justified_rejection(path: Path, reason: str) -> bool:
    """A decodable file may still be rejected for what its header says about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    short, long = sorted((int(ds.Columns), int(ds.Rows)))
    if reason == reasons.DEGENERATE_SIZE:
        return short < MIN_SIDE or long / short > MAX_ASPECT
    if reason == reasons.BURNED_IN_ANNOTATION:
        return str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
    return False


def test_ingest_keeps_every_file_pydicom_decodes(tmp_path, capsys):
    folder = tmp_path / "scans" / "normal"
    folder.mkdir(parents=True)
    present = sorted({Path(p) for p in get_testdata_files() if os.path.isfile(p)})
    for path in present:
        shutil.copyfile(path, folder / flat_name(path, DATA_ROOT))
    ingest(folder.parent, tmp_path / "out")
    summary = json.loads(capsys.readouterr().out)["medimgs"]
    layout = DataLayout(tmp_path / "out")
    got = outcomes_by_file(layout)
    assert len(got) == len(present) == summary["accounted"]
    decodable = [p for p in present if pydicom_decodes(p)]
    assert len(decodable) >= 40
    lost = {
        flat_name(p, DATA_ROOT): got[f"normal/{flat_name(p, DATA_ROOT)}"]
        for p in decodable
        if got[f"normal/{flat_name(p, DATA_ROOT)}"] not in ("kept", "duplicate")
        and not justified_rejection(p, got[f"normal/{flat_name(p, DATA_ROOT)}"])
    }
    assert lost == {}
    manifest, rejects, duplicates = read_tables(layout)
    assert accounting_problems(layout, manifest, rejects, duplicates) == []
    assert schema_problems(manifest, rejects, duplicates) == []
    assert split_problems(layout.root, manifest) == []
    assert set(rejects["reason"]) <= set(reasons.ALL) and rejects["detail"].notna().all()
    # lossless twins are the same picture: MR_small's variants are duplicates of one image
    twins = duplicates[duplicates["source_file"].str.startswith("normal/MR_small_")]
    original = manifest.loc[manifest["source_file"] == "normal/MR_small.dcm", "image_id"]
    assert len(twins) >= 5 and set(twins["duplicate_of"]) == set(original)


def test_frames_and_slices_become_their_own_images(tmp_path, capsys):
    folder = tmp_path / "volumes" / "normal"
    folder.mkdir(parents=True)
    for name in ("rtdose.dcm", "examples_ybr_color.dcm", "MR_small.dcm"):
        shutil.copyfile(get_testdata_file(name), folder / name)
    for name in ("anatomical.nii", "example4d.nii.gz", "nifti1.hdr"):
        shutil.copyfile(NIBABEL / name, folder / name)
    volumes = {"rtdose.dcm", "examples_ybr_color.dcm", "anatomical.nii", "example4d.nii.gz"}
    options = DecodeOptions(50_000_000, FramePolicy("all"))
    formats = {"rtdose.dcm": "dicom", "examples_ybr_color.dcm": "dicom"}
    formats |= {"anatomical.nii": "nifti", "example4d.nii.gz": "nifti"}
    every = {
        name: [f.index for f in decode((folder / name).read_bytes(), fmt, options).frames]
        for name, fmt in formats.items()
    }

    ingest(folder.parent, tmp_path / "middle")
    capsys.readouterr()
    middle = DataLayout(tmp_path / "middle")
    manifest, rejects, duplicates = read_tables(middle)
    assert accounting_problems(middle, manifest, rejects, duplicates) == []
    rows = manifest.set_index("source_file")
    for name in volumes:
        row = rows.loc[f"normal/{name}"]
        assert row["frame_index"] == every[name][(len(every[name]) - 1) // 2] != 0
        assert row["frame_count"] > 1
    assert rows.loc["normal/MR_small.dcm", ["frame_index", "frame_count"]].tolist() == [0, 1]
    assert rejects.set_index("source_file").loc["normal/nifti1.hdr", "reason"] == (
        reasons.UNSUPPORTED_FORMAT
    )

    ingest(folder.parent, tmp_path / "all", "ingest.frame_policy=all")
    summary = json.loads(capsys.readouterr().out)["medimgs"]
    layout = DataLayout(tmp_path / "all")
    manifest, rejects, duplicates = read_tables(layout)
    assert accounting_problems(layout, manifest, rejects, duplicates) == []
    assert summary["accounted"] == len(expected_keys(layout, pd.read_parquet(layout.raw_index)))
    frames = pd.concat([manifest, duplicates])
    for name in volumes:
        mine = frames[frames["source_file"] == f"normal/{name}"]
        assert sorted(mine["frame_index"]) == every[name]
    assert manifest["image_id"].is_unique
    assert (manifest.groupby("source_file")["split"].nunique() == 1).all()  # one scan, one split
    assert all((layout.root / p).is_file() for p in manifest["path"])


def test_accounting_check_catches_a_file_counted_twice(tmp_path, capsys):
    folder = tmp_path / "few" / "normal"
    folder.mkdir(parents=True)
    shutil.copyfile(get_testdata_file("rtdose.dcm"), folder / "rtdose.dcm")
    shutil.copyfile(get_testdata_file("MR_truncated.dcm"), folder / "cut.dcm")
    ingest(folder.parent, tmp_path / "out", "ingest.frame_policy=all")
    capsys.readouterr()
    layout = DataLayout(tmp_path / "out")
    manifest, rejects, duplicates = read_tables(layout)
    assert accounting_problems(layout, manifest, rejects, duplicates) == []
    repeated = pd.concat([manifest, manifest.head(1)])
    assert any("twice" in p for p in accounting_problems(layout, repeated, rejects, duplicates))
    kept_and_rejected = pd.concat(
        [rejects, pd.DataFrame([{**rejects.iloc[0].to_dict(), "source_file": "normal/rtdose.dcm"}])]
    )
    problems = accounting_problems(layout, manifest, kept_and_rejected, duplicates)
    assert any("both rejected and kept" in p for p in problems)
    lost = manifest[manifest["source_file"] != "normal/rtdose.dcm"]
    assert any("in no table" in p for p in accounting_problems(layout, lost, rejects, duplicates))


def test_split_keeps_the_frames_of_one_file_together():
    labels = ClassLabels("c", "human", "head", "MR", "normal")
    kept = [
        Outcome("s", f"scan{i}.nii", image_id=f"{i:02d}{k:02d}", labels=labels, frame_index=k)
        for i in range(10)
        for k in range(5)
    ]
    splits = assign_splits(kept, test_fraction=0.2, max_train_per_class=1000, seed=0)
    for i in range(10):
        assert len({splits[o.image_id] for o in kept if o.source_file == f"scan{i}.nii"}) == 1
    assert list(splits.values()).count("test") == 10  # two whole scans of ten


# privacy ----------------------------------------------------------------------------------------
IDENTITY = {
    "PatientName": "Quixotica^Wendeline",
    "PatientID": "PID-93817264",
    "PatientBirthDate": "19410923",
    "StudyDate": "20170415",
    "InstitutionName": "Zanzibar Memorial Hospital",
    "ReferringPhysicianName": "Brobdingnag^Ulrich",
    "AccessionNumber": "ACC77120934",
}
SECRETS = {*IDENTITY.values(), "Quixotica", "Wendeline", "Brobdingnag"}


def identified_scan(path: Path, **extra) -> Path:
    """A real MR slice (pydicom's MR_small) carrying a made-up identity."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword, value in {**IDENTITY, **extra}.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_no_identifier_reaches_the_tables_logs_or_summary(tmp_path, capsys, caplog):
    folder = tmp_path / "patients" / "normal"
    folder.mkdir(parents=True)
    identified_scan(folder / "kept.dcm")
    identified_scan(folder / "burned.dcm", BurnedInAnnotation="YES")
    cut = identified_scan(folder / "cut.dcm")
    cut.write_bytes(cut.read_bytes()[:-1000])
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        ingest(folder.parent, out)
    printed = capsys.readouterr()
    layout = DataLayout(out)
    got = outcomes_by_file(layout)
    assert got == {
        "normal/kept.dcm": "kept",
        "normal/burned.dcm": reasons.BURNED_IN_ANNOTATION,
        "normal/cut.dcm": reasons.TRUNCATED,
    }
    texts = [printed.out, printed.err, caplog.text]
    tables = [t.astype(str).to_csv() for t in read_tables(layout)]
    written = [
        p.read_bytes() for p in out.rglob("*") if p.is_file() and layout.raw not in p.parents
    ]
    assert written and len(tables) == 3
    for secret in SECRETS:
        assert not any(secret.lower() in t.lower() for t in texts + tables), secret
        assert not any(secret.encode() in blob for blob in written), secret


def test_pydicom_warnings_quoting_the_header_stay_out_of_the_logs(tmp_path, caplog):
    """pydicom logs each of its warnings, and they quote element values ("Invalid value for
    VR DA: '19410923XY'"): decoding silences pydicom's logger while it reads a file."""
    from pydicom.misc import warn_and_log

    from ops.data.cleaning.dicom import quiet_pydicom

    path = identified_scan(tmp_path / "x.dcm", PatientBirthDate="19410923XY")
    caplog.clear()  # writing the invalid date logged it already
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(Rejected) as caught:  # rejected: its header is read for scrubbing
            decode(path.read_bytes()[:-1000], "dicom", DecodeOptions(1_000_000))
        with quiet_pydicom():
            warn_and_log("Invalid value for VR DA: '19410923XY'")
    assert caught.value.reason in reasons.ALL and "19410923" not in caught.value.detail
    assert not [r for r in caplog.records if "19410923" in r.getMessage()]
    with warnings.catch_warnings(record=True), caplog.at_level(logging.DEBUG):
        warn_and_log("Invalid value for VR DA: '19410923XY'")  # outside: pydicom logs it
    assert [r for r in caplog.records if "19410923" in r.getMessage()]


def test_burned_in_annotation_rejection_is_configurable(tmp_path, capsys):
    folder = tmp_path / "annotated" / "normal"
    folder.mkdir(parents=True)
    identified_scan(folder / "burned.dcm", BurnedInAnnotation="YES")
    ingest(folder.parent, tmp_path / "out", "ingest.reject_burned_in_annotation=false")
    capsys.readouterr()
    assert outcomes_by_file(DataLayout(tmp_path / "out")) == {"normal/burned.dcm": "kept"}


def test_error_text_quoting_the_header_is_scrubbed(tmp_path):
    ds = pydicom.dcmread(identified_scan(tmp_path / "x.dcm"))
    values = identifying_values(ds)
    assert {"Quixotica^Wendeline", "Quixotica", "PID-93817264", "19410923"} <= values
    text = scrub("bad value 'QUIXOTICA^WENDELINE' (PID-93817264) seen 19410923", values)
    assert not any(secret.lower() in text.lower() for secret in SECRETS) and "bad value" in text


def test_frame_policy_is_validated():
    with pytest.raises(ValueError, match="frame_policy"):
        FramePolicy("random")
    with pytest.raises(ValueError, match="frame_every_k"):
        FramePolicy("every_k", 0)
    assert FramePolicy("every_k", 2).choose([1, 2, 3, 4, 5]) == [1, 3, 5]
    assert FramePolicy("middle").choose([3, 4, 5, 6]) == [4]
    assert FramePolicy("middle").choose([]) == []


def test_a_flat_multi_frame_dicom_is_rejected_as_empty(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    ds.PixelData = np.zeros(ds.pixel_array.shape, ds.pixel_array.dtype).tobytes()
    ds.save_as(tmp_path / "flat.dcm")
    with pytest.raises(Rejected) as caught:
        decode((tmp_path / "flat.dcm").read_bytes(), "dicom", DecodeOptions(1_000_000))
    assert caught.value.reason == reasons.EMPTY_VOLUME
