"""The weekly champion re-benchmark: schedule and job definitions, the FID regression rule on
synthetic histories, and a real champion run from the micro registry through Dagster."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
import torch
from bench_fixtures import bench_params, bench_world, linked_layout, write_params
from dagster_fixtures import asset_resources

from ops.eval.champion import (
    COLUMNS,
    append_history,
    pin_missing,
    read_baseline,
    read_history,
    regressions,
)


def _history(*runs: tuple[str, str, dict[int, float]], sd: float = 0.5, fp: str = "e1"):
    """Rows of (run_id, measured_at, {steps: fid}) for model ``llcm``, seed sd ``sd``, all
    under the evaluation fingerprint ``fp``."""
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
                    "fid_seed_sd": sd,
                    "seeds": 3,
                    "eval_fingerprint": fp,
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
def _pinned(history: pd.DataFrame, layout) -> pd.DataFrame:
    first = history[history["run_id"] == history["run_id"].iloc[0]]
    return pin_missing(layout, first.to_dict("records"))


def test_tolerance_comes_from_the_measured_seed_spread(layout):
    history = _history(
        ("r1", "2026-01-05", {1: 10.0, 4: 5.0}), ("r2", "2026-01-12", {1: 11.5, 4: 7.5})
    )
    pinned = _pinned(history, layout)
    table = regressions(history, pinned, tolerance_sd=3.0).set_index("steps")
    tolerance = 3.0 * (2 * 0.5**2) ** 0.5  # 2.12 FID
    assert table.loc[1, "tolerance"] == pytest.approx(tolerance)
    assert not table.loc[1, "regressed"]  # +1.5 < 2.12
    assert table.loc[4, "regressed"]  # +2.5 > 2.12
    noisy = _history(("r1", "2026-01-05", {4: 5.0}), ("r2", "2026-01-12", {4: 7.5}), sd=1.0)
    assert not regressions(noisy, read_baseline(layout), 3.0)["regressed"].any()


def test_only_a_pin_of_the_same_evaluation_fingerprint_counts(layout):
    old = _history(("r1", "2026-01-05", {1: 10.0}), fp="old-stick")
    pin_missing(layout, old.to_dict("records"))
    new = _history(("r2", "2026-01-12", {1: 30.0}), fp="new-stick")  # extractor changed
    table = regressions(pd.concat([old, new]), read_baseline(layout), 3.0)
    assert table["status"].tolist() == ["no pinned baseline"] and not table["regressed"].any()
    pin_missing(layout, new.to_dict("records"))
    table = regressions(pd.concat([old, new]), read_baseline(layout), 3.0)
    assert table["status"].tolist() == ["pinned by this run"]
    assert len(read_baseline(layout)) == 2  # one pin per (name, steps, fingerprint)


def test_nothing_measured_gives_an_empty_comparison(layout):
    skipped = _history(("r1", "2026-01-05", {1: 10.0}))
    skipped["status"] = "skipped"
    assert regressions(skipped, read_baseline(layout), 3.0).empty
    assert regressions(pd.DataFrame(columns=COLUMNS), read_baseline(layout), 3.0).empty


def test_dagster_check_fails_on_regression_and_on_nothing_measured(tmp_path):
    from assets.champion import champion_fid_regression
    from ops.layout import DataLayout
    from pipeline.resources import DataResource, ParamsResource

    layout = DataLayout.from_env(tmp_path / "data")
    params_file = write_params(bench_params(), tmp_path / "params.yaml")
    resources = {"params": ParamsResource(path=str(params_file), preset="micro"),
                 "data": DataResource(root=str(layout.root))}  # fmt: skip
    assert not champion_fid_regression(**resources).passed  # no history: nothing measured
    first = _history(("r1", "2026-01-05", {1: 10.0}))
    append_history(layout, first.to_dict("records"))
    pin_missing(layout, first.to_dict("records"))
    append_history(layout, _history(("r2", "2026-01-12", {1: 10.5})).to_dict("records"))
    assert champion_fid_regression(**resources).passed  # +0.5 < 3 x 0.71
    append_history(layout, _history(("r3", "2026-01-19", {1: 14.0})).to_dict("records"))
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
    assert (ok["seeds"] == 3).all() and ok["fid"].notna().all() and (ok["n"] >= 8).all()
    assert ok["fid_seed_sd"].notna().all()
    pinned = read_baseline(layout)
    assert len(pinned) == 2 and set(pinned["run_id"]) == {history["run_id"].iloc[0]}
    skipped = history[history.name == "not_registered"]
    assert (skipped["status"] == "skipped").all() and skipped["reason"].str.contains(
        "no registered"
    ).all()
    # same champion, same seeds: identical FID, so the check passes on the second run
    assert ok.groupby("steps")["fid"].nunique().eq(1).all()
    checks = result.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["champion_fid_regression"] and checks[0].passed
    assert checks[0].metadata["compared"].value == 2
