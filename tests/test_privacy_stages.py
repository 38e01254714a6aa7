"""The ``utility`` and ``privacy_audit`` stages for real: micro teacher and student generate
their synthetic sets, the audit measures them against a MedImgs train split, the utility trains
the classifier recipe on real / synthetic / real+synthetic; both as Dagster materialisations."""

from __future__ import annotations

import json
import os

import dagster as dg
import pandas as pd
import pytest
from bench_fixtures import bench_world, write_params
from dagster_fixtures import asset_resources
from metric_fixtures import make_shape_dataset

from ops.layout import DataLayout
from ops.privacy.stages import (
    AUDIT_SUMMARY,
    build_privacy_audit,
    build_utility,
)
from ops.privacy.synthetic import SET_FILE, SYNTHETIC_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PER_CLASS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return bench_world(tmp_path_factory)


def privacy_params(world: dict) -> dict:
    params = world["params"]
    params = {**params, "privacy": {**params["privacy"]}}
    params["privacy"].update(models={"llcm": 1, "teacher_dpmpp": 1, "lcm": 1}, bootstrap=50)
    params["privacy"]["utility_recipe"] = {"epochs": 3}
    params["presets"]["micro"]["privacy"] = {"images_per_class": PER_CLASS}
    return params


@pytest.fixture
def layout(world, tmp_path) -> DataLayout:
    """Its own MedImgs (enough held-out test images for the audit's reference distribution),
    the world's trained micro models (no lcm: it must be reported as skipped)."""
    layout = DataLayout.from_env(tmp_path / "data")
    make_shape_dataset(layout, n_train=12, n_test=12, n_holdout=1, size=16, seed=3)
    layout.models.mkdir(parents=True, exist_ok=True)
    for name in ("teacher", "llcm", "base", "domain_classifier"):
        if (world["layout"].models / name).exists():
            os.symlink(world["layout"].models / name, layout.models / name)
    return layout


def test_audit_judges_each_models_synthetic_set_and_reuses_it(world, layout):
    params = privacy_params(world)
    summary = build_privacy_audit(params, layout)
    assert summary["skipped"] == ["lcm"] and summary["threshold"] > 0
    table = pd.read_parquet(layout.privacy_table)
    pooled = table[table["class_name"] == "all"].set_index("model")
    classes = sorted(pd.read_parquet(layout.manifest)["class_name"].unique())
    assert set(pooled.index) == {"llcm", "teacher_dpmpp"}
    assert (pooled["n"] == PER_CLASS * len(classes)).all()
    assert ((pooled["share_memorised"] >= 0) & (pooled["share_memorised"] <= 1)).all()
    for path in summary["pairs"].values():
        assert os.path.getsize(path) > 0
    saved = json.loads((layout.reports / AUDIT_SUMMARY).read_text())
    assert saved["n_reference"] == 12 * len(classes)
    # the world's domain classifier gives the feature space, reported beside the pixel verdict
    assert saved["feature_space"] == "domain_classifier"
    llcm = saved["models"]["llcm"]
    assert 0 <= llcm["n_memorised_feature"] <= llcm["n"] and "feature_threshold" in llcm

    meta = layout.reports / SYNTHETIC_DIR / "llcm__1" / SET_FILE
    stamp = meta.stat().st_mtime_ns
    again = build_privacy_audit(params, layout)
    assert meta.stat().st_mtime_ns == stamp  # the cached set was reused, not regenerated
    assert again["models"]["llcm"]["n_memorised"] == summary["models"]["llcm"]["n_memorised"]


def test_utility_trains_on_real_synthetic_and_both(world, layout, capsys):
    summary = build_utility(privacy_params(world), layout)
    table = pd.read_parquet(layout.utility_table)
    pooled = table[table["class_name"] == "all"]
    runs = set(zip(pooled["model"], pooled["training"], strict=True))
    assert ("real", "real") in runs
    assert {("llcm", "synthetic"), ("llcm", "real+synthetic")} <= runs
    assert summary["skipped"] == ["lcm"] and summary["per_class_train_images"] == PER_CLASS
    for column in ("accuracy", "auc"):
        assert (pooled[f"{column}_lo"] <= pooled[column]).all()
        assert (pooled[column] <= pooled[f"{column}_hi"]).all()
    real = pooled[pooled["training"] == "real"].iloc[0]
    assert real["accuracy"] > 1 / len(table["class_name"].unique()) and real["ratio_accuracy"] == 1

    from pipeline.cli import main

    capsys.readouterr()
    assert main(["utility", "--show", "--data", str(layout.root)]) == 0
    printed = capsys.readouterr().out
    assert "| llcm | synthetic |" in printed and "| real | real |" in printed


def test_assets_materialise_with_tables_pictures_and_the_check(world, layout, tmp_path):
    from assets.privacy import privacy_audit, privacy_audit_within_reference_rate, utility

    params_file = write_params(privacy_params(world), tmp_path / "params.yaml")
    resources = asset_resources(layout.root, params_file=params_file)
    result = dg.materialize(
        [utility, privacy_audit, privacy_audit_within_reference_rate], resources=resources
    )
    assert result.success
    events = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert "| llcm | synthetic |" in events["utility"]["table"].value
    assert "| teacher_dpmpp |" in events["privacy_audit"]["table"].value
    assert events["privacy_audit"]["closest_pairs_llcm"].value.startswith("![closest pairs")
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].metadata["limit"].value > 0

    # the benchmark table gains the two columns on each judged model's row at its steps
    from ops.eval.usability import add_usability, usability_markdown

    cells = pd.DataFrame(
        [
            {"model": "llcm", "steps": 1, "class_name": "all"},
            {"model": "llcm", "steps": 2, "class_name": "all"},
            {"model": "llcm", "steps": 1, "class_name": "disc"},
        ]
    )
    judged = add_usability(cells, layout)
    assert 0 <= judged.loc[0, "tos_accuracy"] <= 1 and 0 <= judged.loc[0, "memorised_share"] <= 1
    assert judged.loc[1:, ["tos_accuracy", "memorised_share"]].isna().all().all()
    assert "| llcm | 1 |" in "\n".join(usability_markdown(judged))
