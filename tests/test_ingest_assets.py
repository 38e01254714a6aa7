"""The ingestion assets, materialised by Dagster for real, with their checks."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.medimgs import medimgs_accounting, medimgs_manifest, medimgs_schema, medimgs_split
from assets.raw_sources import raw_sources
from pipeline.resources import DataResource, ParamsResource

FAST = [
    "ingest.max_image_pixels=1000000",
    "ingest.workers=1",
    "presets.micro.ingest.phantoms_per_class=2",
]
INGEST = [raw_sources, medimgs_manifest, medimgs_schema, medimgs_accounting, medimgs_split]


def resources(tmp_path, *overrides: str) -> dict:
    return {
        "params": ParamsResource(preset="micro", overrides=[*FAST, *overrides]),
        "data": DataResource(root=str(tmp_path / "data")),
    }


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


def test_raw_sources_and_medimgs_materialise_with_passing_checks(tmp_path):
    result = dg.materialize(INGEST, resources=resources(tmp_path))
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"medimgs_schema": True, "medimgs_accounting": True, "medimgs_split": True}
    raw_meta = result.asset_materializations_for_node("raw_sources")[0].metadata
    assert raw_meta["failed_sources"].value == 0 and raw_meta["files"].value > 30
    meta = result.asset_materializations_for_node("medimgs_manifest")[0].metadata
    assert meta["dagster/row_count"].value == 2 * 18
    table = meta["classes"].value
    assert table.startswith("| class_name |") and "dog_thorax_xray_cardiomegaly" in table
    assert meta["sample_grid"].value.startswith("![sample grid](data:image/png;base64,")
    assert (tmp_path / "data" / "medimgs" / "manifest.parquet").is_file()


def test_a_failing_source_is_reported_and_the_others_materialise(tmp_path, no_kaggle_credentials):
    res = resources(tmp_path, "ingest.sources=[phantoms, chest_xray_pneumonia]")
    result = dg.materialize(INGEST, resources=res)
    assert result.success
    meta = result.asset_materializations_for_node("raw_sources")[0].metadata
    assert meta["failed_sources"].value == 1
    error = meta["failures"].value["chest_xray_pneumonia"]
    assert "'chest_xray_pneumonia'" in error and "credentials" in error
    medimgs = result.asset_materializations_for_node("medimgs_manifest")[0].metadata
    assert medimgs["dagster/row_count"].value == 2 * 18


def test_the_asset_fails_when_no_source_succeeds(tmp_path, no_kaggle_credentials):
    res = resources(tmp_path, "ingest.sources=[chest_xray_pneumonia]")
    result = dg.materialize([raw_sources], resources=res, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no source materialised" in str(failure.event_specific_data.error)


def test_definitions_collect_the_ingest_assets_and_checks():
    from pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_sources", "medimgs_manifest"} <= keys
    checks = {k.name for k in graph.asset_check_keys}
    assert {"medimgs_schema", "medimgs_accounting", "medimgs_split"} <= checks
