"""The built-in dog experiment asset ``dog_thorax_finetune`` on the micro preset, materialised
by Dagster for real: every table and picture it promises exists and holds measured rows.

The micro fixture's held-out family has one class (``dog_thorax_normal``), so the experiment
runs on that one; the tiny preset's two classes are in the README."""

from __future__ import annotations

import pandas as pd
import pytest
from model_fixtures import copy_data, micro_test_params, prepared_data

from ops.layout import DataLayout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OVERRIDES = [
    "presets.micro.distill.steps=2", "distill.k=100", "finetune.replay_per_class=2",
    "finetune.dog_thorax.classes=[dog_thorax_normal]",
    "finetune.dog_thorax.ratio_images_per_class=3", "finetune.dog_thorax.figure_samples=2",
    "dreambooth.instance_images_per_class=2", "dreambooth.prior_images_per_class=2",
    "presets.micro.dreambooth.steps=2", "presets.micro.finetune.teacher_steps=2",
    "presets.micro.finetune.student_steps=2",
]  # fmt: skip


def test_dog_thorax_asset_fine_tunes_benchmarks_and_measures(tmp_path_factory):
    import dagster as dg
    from dagster_fixtures import asset_resources

    from assets.finetune import dog_thorax_finetune
    from ops.distill.stage import build_lcm, build_llcm
    from ops.eval.classifier_training import build_domain_classifier

    data = copy_data(
        prepared_data(tmp_path_factory), DataLayout(tmp_path_factory.mktemp("dog") / "data")
    )
    params = micro_test_params(*OVERRIDES)
    for build in (build_llcm, build_lcm, build_domain_classifier):
        build(params, data)
    result = dg.materialize(
        [dog_thorax_finetune], resources=asset_resources(data.root, overrides=OVERRIDES)
    )
    assert result.success
    meta = result.asset_materializations_for_node("dog_thorax_finetune")[0].metadata
    assert "## Heart-to-thorax ratio" in meta["report"].value
    assert meta["figure4"].value.startswith("![")

    reports = data.custom("dog_thorax") / "reports"
    table = pd.read_parquet(reports / "benchmark.parquet")
    mean = table[table["class_name"] == "mean"].set_index(["model", "steps"])
    expected = {("base_teacher_dpmpp", 4), ("dreambooth", 4), ("teacher_ddim50", 50),
                ("teacher_dpmpp", 4), ("lcm", 1), ("lcm", 4), ("llcm", 2), ("real", 0)}  # fmt: skip
    assert expected <= set(mean.index)
    assert (mean.loc[list(expected), "status"] == "ok").all()
    assert mean.loc[list(expected), "fid"].notna().all()
    # the references are the dog test split (real images), not a phantom draw
    assert not (reports / "eval_reference").exists()

    ratios = pd.read_parquet(reports / "heart_ratio.parquet")
    assert set(ratios["model"]) == {"real", "base_teacher_dpmpp", "dreambooth", "teacher_ddim50",
                                    "teacher_dpmpp", "lcm", "llcm"}  # fmt: skip
    assert (ratios[ratios["model"] != "real"]["n"] == 3).all()
    forgetting = pd.read_parquet(reports / "forgetting.parquet")
    rows = forgetting[forgetting["class_name"] == "mean"]
    assert list(rows["when"]) == ["before", "after"] and rows["fid"].notna().all()
    base_classes = set(forgetting["class_name"]) - {"mean", "all"}
    assert "dog_thorax_normal" not in base_classes and len(base_classes) >= 2
    assert (data.finetuned_model("dog_thorax") / "classes.json").is_file()
