"""``llcm ingest`` and ``llcm stage`` for the ingestion stages."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ops.data import reasons
from ops.data.sources.adhoc import adhoc_spec
from pipeline.cli import main

FAST = ["--preset", "micro", "--set", "ingest.max_image_pixels=1000000", "--workers", "1"]


def image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_ingest_folder_and_zip_with_command_line_labels(tmp_path, capsys):
    folder = image_folder(tmp_path / "xrays", {"pneumonia": 3, "normal": 2})
    (folder / "normal" / "mask_0.png").write_bytes((folder / "normal" / "0.png").read_bytes())
    zipped = image_folder(tmp_path / "more", {"tuberculosis": 2}, seed=1)
    archive = tmp_path / "tb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(zipped.rglob("*.png")):
            zf.write(file, file.relative_to(zipped).as_posix())
    out = tmp_path / "out"
    argv = ["ingest", str(folder), str(archive), "--out", str(out), "--modality", "X-ray"]
    argv += ["--body-part", "chest", "--exclude", "*/mask_*", *FAST]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["medimgs"]["kept"] == 7 and summary["raw"]["failures"] == {}
    manifest = pd.read_parquet(out / "medimgs" / "manifest.parquet")
    assert set(manifest["prompt"]) == {
        "X-ray of a human chest, pneumonia",
        "X-ray of a human chest, normal",
        "X-ray of a human chest, tuberculosis",
    }
    assert set(manifest["source"]) == {"xrays", "tb"}
    rejects = pd.read_parquet(out / "medimgs" / "rejects.parquet")
    assert rejects[["source_file", "reason"]].values.tolist() == [
        ["normal/mask_0.png", reasons.EXCLUDED]
    ]
    assert all((out / p).is_file() for p in manifest["path"])


def test_ingest_phantoms_by_registry_name(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "ingest",
        "phantoms",
        "--out",
        str(out),
        "--set",
        "presets.micro.ingest.phantoms_per_class=2",
        *FAST,
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["medimgs"]["kept"] == 36
    assert summary["medimgs"]["rejects_by_reason"][reasons.TRUNCATED] == 3


def test_ingest_unknown_source_is_a_clear_error(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "is not a registry source, kaggle:<owner>/<slug>, a folder or a zip" in err
    assert not (tmp_path / "out").exists()


def test_kaggle_sources_parse_and_bad_slugs_are_refused():
    spec = adhoc_spec("kaggle:Owner/Some.Data-set", {"species": "human"}, ())
    assert (spec.kind, spec.location, spec.name) == (
        "kaggle",
        "Owner/Some.Data-set",
        "owner__some.data-set",
    )
    with pytest.raises(ValueError, match="kaggle:<owner>/<dataset>"):
        adhoc_spec("kaggle:not a slug", {}, ())


def test_stage_verbs_run_the_ingest_stages(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    config = ["--preset", "micro", "--data", str(data), "--set", "ingest.max_image_pixels=1000000"]
    config += ["--set", "ingest.workers=1", "--set", "presets.micro.ingest.phantoms_per_class=2"]
    assert main(["stage", "raw_sources", *config]) == 0
    assert json.loads(capsys.readouterr().out)["sources"]["phantoms"]["status"] == "ok"
    assert main(["stage", "medimgs_manifest", *config]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 36
    assert (data / "medimgs" / "manifest.parquet").is_file()
