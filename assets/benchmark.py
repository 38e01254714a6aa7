"""Assets of the benchmark grid: ``benchmark_cells`` (one partition per model x steps cell) and
``benchmark`` (the summary: Table 3, plots, grids, MLflow run).

Two ways to run, on purpose:

* ``benchmark`` alone runs end to end: it first runs every cell of the configured grid that is
  missing, stale (inputs changed since it was measured) or was skipped (model not built yet),
  then summarises. This is the unpartitioned path ``make run`` uses.
* ``benchmark_cells`` re-runs chosen cells from the UI (a partition is ``model|steps``), e.g.
  after retraining one model; materialising ``benchmark`` afterwards reuses every fresh cell.

Why the summary does not require the partitions to be materialised: ``dagster asset
materialize --select '*'`` refuses a selection that contains a partitioned asset without
``--partition``, so the end-to-end run selects ``'* and not key:benchmark_cells'``.

Partitions are static, read from params.yaml when the code location loads:
``benchmark.models`` x (``benchmark.steps`` plus the fixed step counts of reference rows such
as ``teacher_ddim50``). Combinations outside the grid (``teacher_ddim50|4``, ``llcm|50``)
materialise as a no-op that says so.
"""

from typing import Any

import dagster as dg

from assets._tracking import run_training
from assets.metadata import picture
from ops.config import load_params
from ops.distill.ablation import MAIN_STUDENTS, ablation_models
from ops.eval.plan import plan
from pipeline.launcher import LauncherResource
from pipeline.resources import DataResource, MlflowResource, ParamsResource

# Step-comparison grids (Fig. 1) shown inline: the first few classes; all are listed by path.
EMBEDDED_STEP_GRIDS = 4
UPSTREAM = [
    "domain_classifier",
    "teacher",
    "dreambooth",
    *MAIN_STUDENTS,
    *ablation_models(load_params()),
    # the table's train-on-synthetic accuracy and memorised share (make experiments): listed so
    # that a run selecting both orders the benchmark after them; make run selects neither
    "utility",
    "privacy_audit",
]


def grid_partitions(params: dict[str, Any] | None = None) -> dg.MultiPartitionsDefinition:
    """model x steps partitions of the configured grid."""
    cells = plan(params or load_params())
    return dg.MultiPartitionsDefinition(
        {
            "model": dg.StaticPartitionsDefinition(list(dict.fromkeys(m for m, _ in cells))),
            "steps": dg.StaticPartitionsDefinition([str(s) for s in sorted({s for _, s in cells})]),
        }
    )


BENCHMARK_PARTITIONS = grid_partitions()


def with_tracking(params: dict[str, Any], mlflow: MlflowResource) -> dict[str, Any]:
    """params with the MLflow resource's tracking URI (if set), for ops code that calls
    ``ops.tracking.mlflow_setup.setup_mlflow`` itself."""
    if not mlflow.tracking_uri:
        return params
    return {**params, "mlflow": {**params.get("mlflow", {}), "tracking_uri": mlflow.tracking_uri}}


def cell_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| class | FID [95% CI] | KID [95% CI] | n | n_ref | class fidelity | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['class_name']} | {r['fid']:.3f} [{r['fid_lo']:.3f}, {r['fid_hi']:.3f}] | "
            f"{r['kid']:.4f} [{r['kid_lo']:.4f}, {r['kid_hi']:.4f}] | {r['n']} | {r['n_ref']} | "
            f"{r['class_fidelity']:.1%} | {r['seconds_per_image']:.4f} |"
        )
    return "\n".join(lines)


@dg.asset(
    partitions_def=BENCHMARK_PARTITIONS,
    deps=UPSTREAM,
    group_name="benchmark",
    kinds={"pytorch", "parquet"},
    description="One benchmark cell (model x steps over every evaluated class): FID, KID, class "
    "fidelity with 95% intervals, n, n_ref, seconds per image; "
    "reports/cells/<model>__<steps>.parquet and reports/features/<model>__<steps>.npz.",
)
def benchmark_cells(
    context: dg.AssetExecutionContext, params: ParamsResource, data: DataResource
) -> dg.MaterializeResult:
    from ops.eval.cells import run_cell
    from ops.eval.context import POOLED, cell_path

    keys = context.partition_key.keys_by_dimension
    model, steps = keys["model"], int(keys["steps"])
    loaded = params.load()
    if (model, steps) not in plan(loaded, [model]):
        context.log.info(f"{model} at {steps} steps is not a cell of the grid: nothing to do")
        return dg.MaterializeResult(metadata={"status": "not a grid cell"})
    rows = run_cell(model, steps, loaded, data.layout)
    metadata: dict[str, Any] = {
        "status": rows[0]["status"],
        "cell": dg.MetadataValue.path(str(cell_path(data.layout, model, steps))),
    }
    if rows[0]["status"] == "skipped":
        context.log.warning(f"{model}@{steps} skipped: {rows[0]['reason']}")
        metadata["reason"] = rows[0]["reason"]
        return dg.MaterializeResult(metadata=metadata)
    pooled = next(r for r in rows if r["class_name"] == POOLED)
    metadata.update(
        {
            "fid": float(pooled["fid"]),
            "fid_lo": float(pooled["fid_lo"]),
            "fid_hi": float(pooled["fid_hi"]),
            "kid": float(pooled["kid"]),
            "n": int(pooled["n"]),
            "class_fidelity": float(pooled["class_fidelity"]),
            "seconds_per_image": float(pooled["seconds_per_image"]),
            "per_class": dg.MetadataValue.md(cell_markdown(rows)),
            "samples": picture(data.layout.root / rows[0]["sample_grid"], "samples"),
        }
    )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    # The models too, not only the cells: the end-to-end selection leaves benchmark_cells out,
    # and the summary (which runs the missing cells) must still wait for every model.
    deps=[
        *UPSTREAM,
        dg.AssetDep("benchmark_cells", partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="benchmark",
    kinds={"parquet", "mlflow"},
    description="Table 3 and plots from every cell; runs missing or stale cells first.",
)
def benchmark(
    context: dg.AssetExecutionContext,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
    launcher: LauncherResource,
) -> dg.MaterializeResult:
    from ops.eval.report import REPORT_FILES

    summary = run_training(context, launcher, "benchmark", params, data, mlflow)
    for outcome in ("measured", "reused", "skipped"):
        context.log.info(f"{outcome} cells: {', '.join(summary.get(outcome, [])) or 'none'}")
    reports = data.layout.reports
    plot, table = reports / REPORT_FILES["plot"], reports / REPORT_FILES["markdown"]
    metadata: dict[str, Any] = {
        # read where this process sees the data directory (a k8s launch may write elsewhere)
        "table": dg.MetadataValue.md(
            table.read_text() if table.is_file() else f"not readable here: {table}"
        ),
        "fid_vs_steps": picture(plot, "FID vs steps"),
        "plot": dg.MetadataValue.path(str(plot)),
        "report": dg.MetadataValue.path(str(table)),
        "measured_cells": summary["measured_cells"],
        "skipped_cells": dg.MetadataValue.json(summary["skipped_cells"]),
        "ran_now": len(summary["measured"]),
        "reused": len(summary["reused"]),
        "world_size": summary["world_size"],
        "best_fid": dg.MetadataValue.json(summary["best_fid"] or {}),
        "mlflow_run_id": str(summary.get("mlflow_run_id", "")),
    }
    if summary["files"].get("k_ablation"):
        metadata["k_ablation"] = picture(summary["files"]["k_ablation"], "k ablation")
    grids = summary.get("step_grids") or {}
    metadata["step_grids"] = dg.MetadataValue.json(grids)
    for class_name, path in list(grids.items())[:EMBEDDED_STEP_GRIDS]:
        metadata[f"steps_{class_name}"] = picture(path, f"{class_name}: models x steps")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=benchmark,
    description="Every cell of the grid was measured (warns on skipped models or step counts).",
)
def benchmark_complete(data: DataResource) -> dg.AssetCheckResult:
    import pandas as pd

    path = data.layout.reports / "benchmark.parquet"
    df = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=["status"])
    skipped = df[df["status"] == "skipped"]
    return dg.AssetCheckResult(
        passed=bool(skipped.empty and not df.empty),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "skipped": dg.MetadataValue.json(
                {f"{r.model}__{r.steps}": r.reason for r in skipped.itertuples(index=False)}
            ),
        },
    )
