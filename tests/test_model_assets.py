"""The Dagster assets of the model stages: thin wrappers that attach the stages' metadata."""

from __future__ import annotations

import dagster as dg
from dagster_fixtures import asset_resources
from model_fixtures import TEST_OVERRIDES, copy_data, prepared_data

from assets.latents import latents
from assets.teacher import teacher
from ops.layout import DataLayout


def test_latents_and_teacher_assets_materialize_with_metadata(tmp_path_factory, tmp_path):
    layout = copy_data(prepared_data(tmp_path_factory), DataLayout(tmp_path / "data"))
    overrides = [*TEST_OVERRIDES, "presets.micro.teacher.steps=2"]
    resources = asset_resources(layout.root, overrides=overrides)  # in process
    result = dg.materialize([latents, teacher], resources=resources)
    assert result.success
    by_key = {
        m.materialization.asset_key.to_user_string(): m.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    assert by_key["latents"]["skipped"].value is True  # already encoded by the fixture
    assert by_key["latents"]["dagster/row_count"].value == 24
    meta = by_key["teacher"]
    assert meta["steps"].value == 2 and meta["world_size"].value == 1
    assert meta["mlflow_run_id"].value
    assert "data:image/png;base64," in meta["samples"].value
    assert (layout.model("teacher") / "model_index.json").is_file()
