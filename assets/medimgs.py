"""Asset ``medimgs_manifest``: the cleaned MedImgs dataset (stage function
``ops.data.cleaning.build``), with checks of its schema, its accounting and its split."""

from __future__ import annotations

import base64

import dagster as dg

from ops.data.cleaning.build import build_medimgs
from ops.data.cleaning.checks import accounting_problems, schema_problems, split_problems
from ops.data.cleaning.report import class_table, grid_thumbnail_png, to_markdown
from ops.data.cleaning.tables import read_tables
from pipeline.resources import DataResource, ParamsResource


@dg.asset(
    deps=["raw_sources"],
    group_name="ingest",
    kinds={"python", "parquet"},
    description="MedImgs: normalised JPEGs per split and class, manifest, rejects, duplicates.",
)
def medimgs_manifest(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    layout = data.layout
    summary = build_medimgs(params.load(), layout)
    manifest, _, _ = read_tables(layout)
    metadata: dict = {
        "dagster/row_count": summary["kept"],
        "classes": dg.MetadataValue.md(to_markdown(class_table(manifest))),
        "train": summary["train"],
        "test": summary["test"],
        "duplicates": summary["duplicates"],
        "rejected": summary["rejected"],
        "rejects_by_reason": dg.MetadataValue.json(summary["rejects_by_reason"]),
        "manifest": dg.MetadataValue.path(str(layout.manifest)),
    }
    if summary["sample_grid"]:
        grid = layout.root / summary["sample_grid"]
        encoded = base64.b64encode(grid_thumbnail_png(grid)).decode()
        metadata["sample_grid"] = dg.MetadataValue.md(
            f"![sample grid](data:image/png;base64,{encoded})"
        )
        metadata["sample_grid_path"] = dg.MetadataValue.path(str(grid))
    return dg.MaterializeResult(metadata=metadata)


def _result(problems: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
    )


@dg.asset_check(
    asset=medimgs_manifest,
    description="Manifest, rejects and duplicates have the contract's columns.",
)
def medimgs_schema(data: DataResource) -> dg.AssetCheckResult:
    return _result(schema_problems(*read_tables(data.layout)))


@dg.asset_check(
    asset=medimgs_manifest,
    description="Every raw file and archive member is in exactly one of kept, duplicates, rejects.",
)
def medimgs_accounting(data: DataResource) -> dg.AssetCheckResult:
    return _result(accounting_problems(data.layout, *read_tables(data.layout)))


@dg.asset_check(asset=medimgs_manifest, description="No image in both splits; every path exists.")
def medimgs_split(data: DataResource) -> dg.AssetCheckResult:
    manifest, _, _ = read_tables(data.layout)
    return _result(split_problems(data.layout.root, manifest))
