"""Asset ``champion_benchmark``: the registry's champion re-measured (weekly, by the schedule in
``pipeline.schedules``), and the check ``champion_fid_regression`` that fails when its FID
exceeds the pinned baseline of the same evaluation fingerprint by more than
``benchmark.champion_tolerance_sd`` measured seed-to-seed standard deviations, or when nothing
was measured (``ops.eval.champion``). History: ``reports/champion_history.parquet``; pinned
baselines: ``reports/champion_baseline.parquet``."""

import dagster as dg

from assets.benchmark import with_tracking
from pipeline.resources import DataResource, MlflowResource, ParamsResource


def _markdown(df) -> str:
    if df.empty:
        return "nothing measured"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


@dg.asset(
    deps=["domain_classifier", "llcm"],  # llcm: the distilled model whose versions are registered
    group_name="registry",
    kinds={"mlflow", "parquet"},
    description="The champion (models:/<name>@champion) benchmarked at benchmark.champion_steps; "
    "appended to reports/champion_history.parquet.",
)
def champion_benchmark(
    context: dg.AssetExecutionContext,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    import pandas as pd

    from ops.eval.champion import run_champion_benchmark

    summary = run_champion_benchmark(with_tracking(params.load(), mlflow), data.layout)
    rows = pd.DataFrame(summary["rows"])
    for row in summary["rows"]:
        if row["status"] != "ok":
            context.log.warning(f"{row['uri']}: skipped: {row['reason']}")
    shown = ["name", "version", "steps", "status", "fid", "kid", "class_fidelity", "reason"]
    return dg.MaterializeResult(
        metadata={
            "run_id": summary["run_id"],
            "results": dg.MetadataValue.md(_markdown(rows[[c for c in shown if c in rows]])),
            "history_runs": summary["history_runs"],
            "history": dg.MetadataValue.path(summary["history"]),
        }
    )


@dg.asset_check(
    asset=champion_benchmark,
    description="FID of the latest champion run within champion_tolerance_sd seed-to-seed sds "
    "of the pinned baseline with the same evaluation fingerprint; fails if nothing was measured.",
)
def champion_fid_regression(params: ParamsResource, data: DataResource) -> dg.AssetCheckResult:
    from ops.eval.champion import read_baseline, read_history, regressions
    from ops.eval.context import benchmark_config

    tolerance = float(benchmark_config(params.load())["champion_tolerance_sd"])
    table = regressions(read_history(data.layout), read_baseline(data.layout), tolerance)
    regressed = table[table["regressed"].astype(bool)]
    if table.empty:
        description = "nothing was measured in the latest champion run"
    elif regressed.empty:
        description = "no regression"
    else:
        description = f"FID regressed beyond {tolerance} seed sds: " + ", ".join(
            f"{r.name}@{r.steps} {r.pinned_fid:.3f}->{r.fid:.3f} (tol {r.tolerance:.3f})"
            for r in regressed.itertuples()
        )
    return dg.AssetCheckResult(
        passed=bool(regressed.empty and not table.empty),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "tolerance_sd": tolerance,
            "compared": int((table["status"] == "compared").sum()) if not table.empty else 0,
            "regressed": len(regressed),
            "comparison": dg.MetadataValue.md(_markdown(table.round(4))),
        },
    )
