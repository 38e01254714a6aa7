"""The benchmark grid end to end on micro models: cells, skipped models, reports, DVC metrics,
cell reuse, Dagster partitions and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from bench_fixtures import bench_params, bench_world, linked_layout, write_params
from dagster_fixtures import asset_resources

from ops.eval.cells import run_cell
from ops.eval.context import MEAN, POOLED, REAL, SUMMARY, cell_path, evaluated_classes
from ops.eval.plan import grid_cells, model_spec, unavailable_reason
from ops.eval.runner import plan, run_benchmark, run_cells

METRIC_COLUMNS = ["fid", "kid", "n", "class_fidelity", "seconds_per_image"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return bench_world(tmp_path_factory)


@pytest.fixture(scope="module")
def grid(world):
    """The whole micro grid, once: 7 measured cells, 4 skipped."""
    torch.set_num_threads(1)
    summary = run_benchmark(world["params"], world["layout"], log_mlflow=False)
    return summary


# --- the plan --------------------------------------------------------------------------------
def test_plan_gives_reference_rows_one_cell():
    cells = grid_cells(["teacher_ddim", "teacher_ddim50", "llcm"], [4, 1, 2])
    assert cells == [
        ("teacher_ddim", 1),
        ("teacher_ddim", 2),
        ("teacher_ddim", 4),
        ("teacher_ddim50", 50),
        ("llcm", 1),
        ("llcm", 2),
        ("llcm", 4),
    ]
    assert model_spec("llcm_k10").family == "consistency"
    assert model_spec("teacher_dpmpp").scheduler == "dpmpp"
    assert len(plan(bench_params())) == 5 * 2 + 1
    per_model = {**bench_params(), "benchmark": {**bench_params()["benchmark"],
                                                 "model_steps": {"llcm": [1]}}}  # fmt: skip
    assert [c for c in plan(per_model) if c[0] == "llcm"] == [("llcm", 1)]


def test_evaluated_classes_are_deterministic_and_skip_holdout_families():
    params = bench_params()
    params["presets"]["micro"]["benchmark"]["classes"] = 2
    rows = []
    for name, n_test, holdout in [
        ("b", 5, False),
        ("a", 5, False),
        ("c", 9, True),
        ("d", 1, False),
    ]:
        rows += [
            {"class_name": name, "split": "train", "holdout": holdout, "prompt": f"p {name}"}
        ] * 3
        rows += [
            {"class_name": name, "split": "test", "holdout": holdout, "prompt": f"p {name}"}
        ] * n_test
    manifest = pd.DataFrame(rows)
    # c: only holdout training rows; d: a single test image; a/b tie on 5 test images -> by name
    assert evaluated_classes(params, manifest) == {"a": "p a", "b": "p b"}
    assert evaluated_classes(params, manifest.sample(frac=1, random_state=1)) == {
        "a": "p a",
        "b": "p b",
    }


def test_unavailable_models_and_step_counts_give_reasons(world):
    layout = world["layout"]
    assert unavailable_reason(model_spec("llcm"), layout, 2) is None
    assert "missing" in unavailable_reason(model_spec("lcm"), layout, 2)
    # micro student: k = 20 -> original_inference_steps = 50
    assert "exceed" in unavailable_reason(model_spec("llcm"), layout, 60)


# --- the grid end to end --------------------------------------------------------------------
INTERVALS = ["fid_lo", "fid_hi", "kid_lo", "kid_hi", "class_fidelity_lo", "class_fidelity_hi"]


def test_cells_have_per_class_and_pooled_metrics(world, grid):
    df = pd.read_parquet(world["layout"].reports / "benchmark.parquet")
    ok = df[(df["status"] == "ok") & (df["model"] != REAL)]
    classes = sorted(evaluated_classes(world["params"], world["manifest"]))
    assert set(zip(ok["model"], ok["steps"], strict=True)) == {
        ("teacher_ddim", 1),
        ("teacher_ddim", 2),
        ("teacher_dpmpp", 1),
        ("teacher_dpmpp", 2),
        ("teacher_ddim50", 50),
        ("llcm", 1),
        ("llcm", 2),
    }
    for (_, _), cell in ok.groupby(["model", "steps"]):
        assert sorted(cell["class_name"]) == sorted([*classes, POOLED, MEAN])
        per_class = cell[~cell.class_name.isin(SUMMARY)]
        pooled = cell[cell.class_name == POOLED].iloc[0]
        assert (per_class["n"] == 4).all() and pooled["n"] == 8
        assert (per_class["n_ref"] == 6).all() and pooled["n_ref"] == 12  # the test split
        assert cell[METRIC_COLUMNS + INTERVALS].notna().all().all()
        for metric in ("fid", "kid", "class_fidelity"):
            assert (cell[f"{metric}_lo"] <= cell[f"{metric}_hi"]).all()
        mean = cell[cell.class_name == MEAN].iloc[0]
        assert mean["fid"] == pytest.approx(per_class["fid"].mean())
        assert pooled["kid"] == pytest.approx(per_class["kid"].mean())  # per class, averaged
        assert np.isfinite(cell["fid"]).all() and (cell["fid"] >= 0).all()
        assert ((cell["class_fidelity"] >= 0) & (cell["class_fidelity"] <= 1)).all()
        assert (cell["seconds_per_image"] > 0).all()
        # the pooled fidelity weighs every class equally
        assert pooled["class_fidelity"] == pytest.approx(per_class["class_fidelity"].mean())
        assert (world["layout"].root / pooled["sample_grid"]).is_file()
    nfe = ok.drop_duplicates(["model", "steps"]).set_index(["model", "steps"])["nfe"]
    assert nfe[("teacher_ddim", 2)] == 4 and nfe[("teacher_ddim50", 50)] == 100  # CFG: 2 calls
    assert nfe[("llcm", 2)] == 2  # guidance is embedded in the student


def test_missing_models_are_skipped_with_a_reason(world, grid):
    assert set(grid["skipped_cells"]) == {"dreambooth__1", "dreambooth__2", "lcm__1", "lcm__2"}
    assert all("missing" in reason for reason in grid["skipped_cells"].values())
    table = (world["layout"].reports / "benchmark.md").read_text()
    assert "## Skipped cells" in table and "lcm@1, lcm@2" in table


def test_summary_files_and_dvc_metrics(world, grid):
    reports = world["layout"].reports
    df = pd.read_parquet(reports / "benchmark.parquet")
    # measured cells and the floor x (2 classes + all + mean) + skipped cells
    assert len(df) == (7 + 1) * 4 + 4
    metrics = json.loads((reports / "benchmark.json").read_text())

    def leaves(node):
        if isinstance(node, dict):
            return [x for value in node.values() for x in leaves(value)]
        return [node]

    assert all(isinstance(x, int | float) and np.isfinite(x) for x in leaves(metrics))
    assert set(metrics["fid"]) == {"teacher_ddim", "teacher_dpmpp", "teacher_ddim50", "llcm", REAL}
    assert set(metrics["fid"]["llcm"]) == {"1", "2"} and set(metrics["fid"]["teacher_ddim50"]) == {
        "50"
    }
    pooled = df[(df.class_name == POOLED) & (df.status == "ok")].set_index(["model", "steps"])
    assert metrics["fid"]["llcm"]["2"] == pytest.approx(pooled.loc[("llcm", 2), "fid"], abs=1e-6)
    assert set(metrics["fid_per_class"]) == set(
        evaluated_classes(world["params"], world["manifest"])
    )

    csv = pd.read_csv(reports / "fid_vs_steps.csv")
    assert {"model", "steps", "fid", "fid_lo", "fid_hi"} <= set(csv.columns) and len(
        csv
    ) == 8  # + real
    table = (reports / "benchmark.md").read_text()
    assert "2 evaluated classes" in table and "**Floor** (model `real`" in table
    assert "| Model | 1 | 2 | 50 |" in table and "## Per-class FID" in table
    assert "## FID difference against `teacher_dpmpp`" in table
    classes = evaluated_classes(world["params"], world["manifest"])
    for name in ["fid_vs_steps.png", "fid_vs_ms.png", *(f"step_grids/{c}.png" for c in classes)]:
        assert (reports / name).stat().st_size > 1000, name
    assert grid["best_fid"]["fid"] == pytest.approx(csv[csv.model != REAL]["fid"].min())


def test_fresh_cells_are_reused_and_changed_inputs_rerun(world, grid):
    params, layout = world["params"], world["layout"]
    again = run_cells(params, layout, plan(params))
    assert again["measured"] == [] and len(again["reused"]) == 7 and again["floor"] == ["reused"]
    assert sorted(again["skipped"]) == sorted(grid["skipped_cells"])  # retried, still missing
    changed = bench_params()
    changed["sampling"]["guidance_scale"] = 3.0
    rerun = run_cells(changed, layout, [("llcm", 1)])
    assert rerun["measured"] == ["llcm__1"]
    run_cells(params, layout, [("llcm", 1)])  # restore for the other tests


def test_a_tcd_suffix_benchmarks_the_student_with_tcd_sampling(world, grid):
    """``llcm-tcd0.3`` samples models/llcm with TCD at gamma 0.3: its own row, measured (not
    copied from llcm's cell), with other numbers at 2 steps."""
    spec = model_spec("llcm-tcd0.3")
    assert (spec.directory, spec.gamma, spec.family) == ("llcm", 0.3, "consistency")
    assert model_spec("llcm").gamma is None
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        model_spec("llcm-tcd1.5")
    params, layout = world["params"], world["layout"]
    done = run_cells(params, layout, [("llcm-tcd0.3", 2)])
    assert done["measured"] == ["llcm-tcd0.3__2"]
    tcd = pd.read_parquet(cell_path(layout, "llcm-tcd0.3", 2))
    own = pd.read_parquet(cell_path(layout, "llcm", 2))
    assert (tcd["status"] == "ok").all() and tcd["fid"].notna().all()
    assert tcd["fid"].tolist() != own["fid"].tolist()
    # the row's name is a valid MLflow metric name in the project's store (log_to_mlflow)
    import mlflow

    from ops.tracking.mlflow_setup import setup_mlflow

    with mlflow.start_run(experiment_id=setup_mlflow(layout, params)):
        mlflow.log_metric(f"fid/{spec.name}", float(tcd["fid"].iloc[0]), step=2)


def test_same_seed_same_numbers(world, grid):
    before = pd.read_parquet(cell_path(world["layout"], "teacher_dpmpp", 1))
    rows = run_cell("teacher_dpmpp", 1, world["params"], world["layout"])
    after = pd.DataFrame(rows)
    assert after["fid"].tolist() == before["fid"].tolist()
    assert after["class_fidelity"].tolist() == before["class_fidelity"].tolist()


def test_a_fixed_step_model_rejects_other_step_counts(world):
    with pytest.raises(ValueError, match="50 steps only"):
        run_cell("teacher_ddim50", 4, world["params"], world["layout"])


# --- Dagster: partitions, then the summary ---------------------------------------------------
def test_partitions_run_single_cells_then_the_summary_fills_the_rest(
    world, tmp_path, tmp_path_factory
):
    from micro_sd import micro_registry

    from assets.benchmark import BENCHMARK_PARTITIONS, benchmark, benchmark_cells

    registry = micro_registry(tmp_path_factory)  # an MLflow store that already exists
    params = bench_params()
    params["benchmark"]["models"] = ["teacher_dpmpp", "llcm", "lcm"]
    params_file = write_params(params, tmp_path / "params.yaml")
    layout = linked_layout(world, tmp_path / "linked")
    tracking = f"sqlite:///{registry['layout'].mlflow_db}"
    resources = asset_resources(layout.root, params_file=params_file, tracking_uri=tracking)

    keys = {str(k) for k in BENCHMARK_PARTITIONS.get_partition_keys()}
    assert {"llcm|2", "teacher_dpmpp|1", "teacher_dpmpp|8"} <= keys
    for model, steps in (("llcm", "2"), ("teacher_dpmpp", "1")):
        key = dg.MultiPartitionKey({"model": model, "steps": steps})
        result = dg.materialize([benchmark_cells], partition_key=key, resources=resources)
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert meta["status"].value == "ok" and meta["n"].value == 8
    written = sorted(p.name for p in (layout.reports / "cells").glob("*.parquet"))
    assert written == ["llcm__2.parquet", "teacher_dpmpp__1.parquet"]

    off_grid = dg.MultiPartitionKey({"model": "teacher_dpmpp", "steps": "8"})
    result = dg.materialize([benchmark_cells], partition_key=off_grid, resources=resources)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["status"].value == "not a grid cell"

    result = dg.materialize([benchmark], resources=resources)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["reused"].value == 2 and meta["ran_now"].value == 2  # llcm@1, teacher_dpmpp@2
    assert meta["measured_cells"].value == 4
    assert set(meta["skipped_cells"].value) == {"lcm__1", "lcm__2"}
    assert "**Floor**" in meta["table"].value and "| Model | 1 | 2 |" in meta["table"].value
    assert meta["plot"].value.endswith("fid_vs_steps.png")
    classes = evaluated_classes(params, world["manifest"])
    assert set(meta["step_grids"].value) == set(classes)  # Fig. 1 per class, shown inline
    assert all(meta[f"steps_{c}"].value.startswith("![") for c in classes)
    assert meta["k_ablation"].value.startswith("![")  # a placeholder: no ablation students here

    import mlflow

    run = mlflow.get_run(meta["mlflow_run_id"].value)
    assert run.info.run_name == "benchmark"
    assert {"fid/llcm", "kid/llcm", "fid/teacher_dpmpp"} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")}
    assert {
        "reports/benchmark.md",
        "reports/benchmark.json",
        "reports/fid_vs_steps.png",
    } <= artifacts


def test_make_run_selection_excludes_only_the_partitioned_asset():
    """``dagster asset materialize --select '*'`` refuses partitioned assets without
    ``--partition``; this is the selection ``make run`` uses instead."""
    import re

    from assets.benchmark import UPSTREAM
    from pipeline.definitions import defs

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    run = makefile[makefile.index("\nrun:") :]
    selection = re.search(r"--select '([^']+)'", run).group(1)  # make run's own selection
    graph = defs.resolve_asset_graph()
    selected = dg.AssetSelection.from_string(selection).resolve(graph)
    names = {k.to_user_string() for k in selected}
    assert {"domain_classifier", "dreambooth", "benchmark", "llcm", "lcm"} <= names
    assert not names & {"benchmark_cells", "finetuned", "dog_thorax_finetune", "utility"}
    # the phased study student trains under make experiments (its Dagster job too)
    from pipeline.schedules import experiments_job

    assert "llcm_pcm" not in names
    studies = experiments_job.selection.resolve(graph)
    assert dg.AssetKey("llcm_pcm") in studies and dg.AssetKey("llcm_k10") in studies
    partitioned = [k for k in selected if graph.get(k).partitions_def is not None]
    assert partitioned == []
    # without the cells in the selection, the summary must still run after every model
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("benchmark")).parent_keys}
    assert set(UPSTREAM) | {"benchmark_cells"} <= parents


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_benchmark_reuses_cells_and_report_prints_table_3(world, grid, tmp_path, capsys):
    from pipeline.cli import main

    params_file = write_params(world["params"], tmp_path / "params.yaml")
    data = str(world["layout"].root)
    rc = main(["benchmark", "--models", "llcm", "--steps", "1", "2", "--no-mlflow",
               "--params", str(params_file), "--data", data])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["reused"] == ["llcm__1", "llcm__2"] and out["measured"] == []
    assert main(["report", "--data", data]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Benchmark") and "## FID, all classes" in printed
    assert main(["report", "--data", str(tmp_path / "empty")]) == 2
    assert "no benchmark report" in capsys.readouterr().err


def test_k_ablation_students_get_their_own_table_and_picture(world, tmp_path):
    """Students llcm_k<k> are cells of the grid, reported in a skip-k table (llcm is the row
    at distill.k) and kept out of Table 3; the picture needs at least one student."""
    from ops.eval.report import k_ablation
    from ops.eval.runner import summarize
    from ops.layout import DataLayout

    layout = DataLayout.from_env(tmp_path / "data")
    layout.models.mkdir(parents=True)
    (layout.root / "medimgs").symlink_to(world["layout"].root / "medimgs")
    for name in ("domain_classifier", "llcm"):
        (layout.models / name).symlink_to(world["layout"].model(name))
    params = bench_params()
    params["distill"]["k_ablation"] = [5, 10]
    assert [c for c in plan(params) if c[0].startswith("llcm_k")] == [
        ("llcm_k5", 1), ("llcm_k5", 2), ("llcm_k10", 1), ("llcm_k10", 2)
    ]  # fmt: skip
    assert k_ablation(params, layout) is None  # llcm alone: no student to compare with
    # the micro llcm (k = 20) stands in for a k = 10 student: the pipeline reads names only
    (layout.models / "llcm_k10").symlink_to(world["layout"].model("llcm"))
    outcome = run_cells(params, layout, [("llcm", 1), ("llcm_k5", 1), ("llcm_k10", 1)])
    # same files as llcm, same sampler and seeds: nothing new to measure, the cell is copied
    assert outcome["measured"] == ["llcm__1"] and outcome["copied"] == ["llcm_k10__1"]
    assert outcome["skipped"] == ["llcm_k5__1"]

    summary = summarize(layout, params)
    table3, ablation = summary["table"].split("## Skip k ablation")
    assert "llcm_k10" not in table3 and "| llcm |" in table3
    fid = json.loads(layout.reports.joinpath("benchmark.json").read_text())["fid"]
    assert fid["llcm_k10"]["1"] == fid["llcm"]["1"]  # same weights, same seeds, same FID
    assert f"| k = 10 (`llcm_k10`) | {fid['llcm_k10']['1']:.2f} [" in ablation
    assert f"| k = 20 (`llcm`) | {fid['llcm']['1']:.2f} [" in ablation
    assert "| k = 5 (`llcm_k5`) | – |" in ablation
    assert "llcm_k5__1" in summary["skipped_cells"]
    path = k_ablation(params, layout)
    assert path == layout.reports / "k_ablation.png" and path.stat().st_size > 1000


# --- saved features, seeds, fingerprints -----------------------------------------------------
def test_saved_features_recompute_every_row_of_the_table(world, grid, capsys):
    from ops.eval.saved_features import features_path, main, recompute, reference_features_path

    layout = world["layout"]
    df = pd.read_parquet(layout.reports / "benchmark.parquet")
    ref = reference_features_path(layout)
    for model, steps in (("llcm", 2), ("teacher_dpmpp", 1), (REAL, 0)):
        path = features_path(layout, model, steps)
        with np.load(path) as saved:
            assert saved["features"].shape[0] == saved["class_name"].shape[0]
        again = recompute(path, ref)
        cell = df[(df.model == model) & (df.steps == steps)].set_index("class_name")
        for row, metrics in again.items():
            assert metrics["fid"] == pytest.approx(cell.loc[row, "fid"], rel=1e-6), (model, row)
            assert metrics["kid"] == pytest.approx(cell.loc[row, "kid"], rel=1e-6, abs=1e-9)
    assert main([str(features_path(layout, "llcm", 1)), "--class", POOLED]) == 0
    printed = json.loads(capsys.readouterr().out)
    pooled = df[(df.model == "llcm") & (df.steps == 1) & (df.class_name == POOLED)].iloc[0]
    assert printed["fid"] == pytest.approx(pooled["fid"], abs=1e-5)


def test_headline_cells_have_several_seeds_and_a_seed_spread(world, grid):
    df = pd.read_parquet(world["layout"].reports / "benchmark.parquet")
    pooled = df[(df.class_name == POOLED) & (df.status == "ok")].set_index(["model", "steps"])
    assert pooled.loc[("llcm", 2), "seeds"] == 2 and pooled.loc[("llcm", 1), "seeds"] == 1
    assert np.isfinite(pooled.loc[("llcm", 2), "fid_seed_sd"])
    assert np.isnan(pooled.loc[("llcm", 1), "fid_seed_sd"])
    assert pooled.loc[("llcm", 2), "n"] == pooled.loc[("llcm", 1), "n"]  # split, same cost
    diff = df[(df.model == "llcm") & (df.steps == 1) & (df.class_name == POOLED)].iloc[0]
    assert diff["baseline"] == "teacher_dpmpp" and np.isfinite(diff["fid_diff"])
    assert diff["fid_diff_lo"] <= diff["fid_diff_hi"]


def test_a_change_to_the_sampler_code_reruns_only_its_family(world, grid, monkeypatch):
    from ops.eval import context as context_module

    params, layout = world["params"], world["layout"]
    cells = [("llcm", 1), ("teacher_ddim", 1)]
    assert run_cells(params, layout, cells)["reused"] == ["llcm__1", "teacher_ddim__1"]
    versions = dict(context_module.code_versions())
    monkeypatch.setattr(
        context_module, "code_versions", lambda: {**versions, "consistency": "changed"}
    )
    rerun = run_cells(params, layout, cells)
    assert rerun["measured"] == ["llcm__1"] and rerun["reused"] == ["teacher_ddim__1"]
    monkeypatch.undo()
    run_cells(params, layout, [("llcm", 1)])  # restore for the other tests


def test_class_fidelity_table_gathers_ceiling_and_each_model_per_class(world, grid):
    from ops.eval.fidelity_table import FILE, fidelity_columns

    text = (world["layout"].reports / FILE).read_text()
    columns = fidelity_columns(world["layout"])
    classes = set(evaluated_classes(world["params"], world["manifest"]))
    assert classes <= set(columns["ceiling (real test images)"])
    assert any(name.startswith("teacher DPM-Solver++") for name in columns)
    assert set(columns["llcm 1"]) == classes
    assert "| **mean** |" in text and "ceiling (real test images)" in text
