"""The weekly champion re-benchmark: schedule and job definitions, the FID regression rule on
synthetic histories, and a real champion run from the micro registry through Dagster."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
import torch
from bench_fixtures import bench_params, bench_world, linked_layout, write_params
from dagster_fixtures import asset_resources

from ops.eval.champion import COLUMNS, append_history, read_history, regressions


def _history(*runs: tuple[str, str, dict[int, float]]) -> pd.DataFrame:
    """Rows of (run_id, measured_at, {steps: fid}) for model ``llcm``."""
    rows = []
    for run_id, at, fids in runs:
        for steps, fid in fids.items():
            rows.append(
                {
                    "run_id": run_id,
                    "measured_at": at,
                    "name": "llcm",
                    "uri": "models:/llcm@champion",
                    "version": "1",
                    "steps": steps,
                    "status": "ok",
                    "reason": "",
                    "fid": fid,
                }  # fmt: skip
            )
    return pd.DataFrame(rows, columns=COLUMNS)


# --- definitions ---------------------------------------------------------------------------
def test_weekly_schedule_targets_the_champion_job():
    from pipeline.definitions import defs

    schedule = defs.resolve_schedule_def("weekly_champion_benchmark")
    assert schedule.cron_schedule == "0 3 * * 1"  # Mondays 03:00
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "champion_benchmark_job"
    job = defs.resolve_job_def("champion_benchmark_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == {"champion_benchmark"}
    check_keys = {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
    assert "champion_fid_regression" in check_keys


# --- the regression rule --------------------------------------------------------------------
def test_within_tolerance_passes_beyond_fails():
    history = _history(
        ("r1", "2026-01-05", {1: 10.0, 4: 5.0}), ("r2", "2026-01-12", {1: 10.9, 4: 5.6})
    )
    table = regressions(history, tolerance=0.10).set_index("steps")
    assert not table.loc[1, "regressed"]  # +9 %
    assert table.loc[4, "regressed"]  # +12 %
    assert table.loc[4, "ratio"] == pytest.approx(1.12)
    assert not regressions(history, tolerance=0.15)["regressed"].any()


def test_compares_with_the_last_recorded_run_only():
    history = _history(
        ("r1", "2026-01-05", {1: 20.0}),
        ("r2", "2026-01-12", {1: 10.0}),
        ("r3", "2026-01-19", {1: 12.0}),  # better than r1, but 20 % worse than r2
    )
    table = regressions(history.sample(frac=1, random_state=0), tolerance=0.10)
    assert table["previous_fid"].tolist() == [10.0] and table["regressed"].tolist() == [True]


def test_first_run_and_skipped_runs_do_not_fail():
    assert not regressions(_history(("r1", "2026-01-05", {1: 10.0})), 0.1)["regressed"].any()
    skipped = _history(("r1", "2026-01-05", {1: 10.0}))
    skipped.loc[len(skipped)] = [
        "r2",
        "2026-01-12",
        "llcm",
        "u",
        None,
        -1,
        "skipped",
        "no champion",
    ] + [None] * 5
    table = regressions(skipped, 0.1)
    assert table["previous_fid"].isna().all() and not table["regressed"].any()
    assert regressions(pd.DataFrame(columns=COLUMNS), 0.1).empty


def test_dagster_check_reads_the_history(tmp_path):
    from assets.champion import champion_fid_regression
    from ops.layout import DataLayout
    from pipeline.resources import DataResource, ParamsResource

    layout = DataLayout.from_env(tmp_path / "data")
    params_file = write_params(bench_params(), tmp_path / "params.yaml")
    resources = {"params": ParamsResource(path=str(params_file), preset="micro"),
                 "data": DataResource(root=str(layout.root))}  # fmt: skip
    history = _history(("r1", "2026-01-05", {1: 10.0}), ("r2", "2026-01-12", {1: 10.5}))
    append_history(layout, history.to_dict("records"))
    assert champion_fid_regression(**resources).passed  # +5 % < 10 %
    append_history(layout, _history(("r3", "2026-01-19", {1: 12.0})).to_dict("records"))
    result = champion_fid_regression(**resources)
    assert not result.passed and "llcm@1" in result.description
    assert len(read_history(layout)) == 3


# --- a real champion from the registry, through Dagster ---------------------------------------
def test_champion_benchmark_from_the_registry(tmp_path, tmp_path_factory):
    from micro_sd import micro_registry

    from assets.champion import champion_benchmark, champion_fid_regression

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = bench_world(tmp_path_factory)
        registry = micro_registry(tmp_path_factory)  # llcm v1 is the champion
        params = bench_params()
        params["benchmark"]["champion_models"] = ["llcm", "not_registered"]
        layout = linked_layout(world, tmp_path / "linked")
        resources = asset_resources(
            layout.root,
            params_file=write_params(params, tmp_path / "p.yaml"),
            tracking_uri=f"sqlite:///{registry['layout'].mlflow_db}",
        )
        for _ in range(2):
            result = dg.materialize(
                [champion_benchmark, champion_fid_regression], resources=resources
            )
            assert result.success
    finally:
        torch.set_num_threads(previous)
    history = read_history(layout)
    assert history["run_id"].nunique() == 2
    ok = history[history.status == "ok"]
    assert sorted(ok["steps"].unique()) == [1, 2] and (ok["version"] == "1").all()
    assert (ok["n"] == 8).all() and ok["fid"].notna().all()
    skipped = history[history.name == "not_registered"]
    assert (skipped["status"] == "skipped").all() and skipped["reason"].str.contains(
        "no registered"
    ).all()
    # same champion, same seeds: identical FID, so the check passes on the second run
    assert ok.groupby("steps")["fid"].nunique().eq(1).all()
    checks = result.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["champion_fid_regression"] and checks[0].passed
    assert checks[0].metadata["compared"].value == 2
