"""A training asset materialised through the ``local`` launcher: ``accelerate launch`` with 2 CPU
processes under Dagster Pipes, the same asset code as in process."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_fixtures import asset_resources
from model_fixtures import TEST_OVERRIDES, copy_data, prepared_data

from assets.teacher import teacher
from ops.layout import DataLayout


@pytest.fixture
def data(tmp_path_factory, tmp_path) -> DataLayout:
    return copy_data(prepared_data(tmp_path_factory), DataLayout(tmp_path / "data"))


def test_teacher_asset_runs_in_two_launched_processes(data, omp_one_thread):
    overrides = [*TEST_OVERRIDES, "presets.micro.teacher.steps=4"]
    resources = asset_resources(data.root, overrides=overrides, processes=2)
    result = dg.materialize([teacher], resources=resources)
    assert result.success
    [event] = result.asset_materializations_for_node("teacher")
    metadata = event.metadata
    assert metadata["world_size"].value == 2
    assert metadata["steps"].value == 4
    assert metadata["global_batch_size"].value == 8
    assert (data.model("teacher") / "model_index.json").is_file()
