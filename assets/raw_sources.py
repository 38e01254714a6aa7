"""Asset ``raw_sources``: every configured source fetched into ``raw/<source>/`` and indexed
in ``raw/index.parquet`` (stage function ``ops.data.sources.materialize``).

No ``from __future__ import annotations`` here: Dagster inspects the ``context`` annotation as a
real type.
"""

import dagster as dg

from ops.data.sources.kaggle_fetch import SourceFetchError
from ops.data.sources.materialize import materialize_raw_sources
from pipeline.resources import DataResource, ParamsResource


def sources_markdown(sources: dict[str, dict]) -> str:
    lines = ["| source | kind | status | files / detail |", "| --- | --- | --- | --- |"]
    for name, info in sources.items():
        detail = info.get("error") or info.get("archive") or info.get("generated_images") or ""
        lines.append(f"| {name} | {info.get('kind')} | {info.get('status')} | {detail} |")
    return "\n".join(lines)


@dg.asset(
    group_name="ingest",
    kinds={"python", "parquet"},
    description="Raw medical image sources as they came, plus raw/index.parquet.",
)
def raw_sources(
    context: dg.AssetExecutionContext, params: ParamsResource, data: DataResource
) -> dg.MaterializeResult:
    layout = data.layout
    try:
        summary = materialize_raw_sources(params.load(), layout)
    except SourceFetchError as exc:
        raise dg.Failure(description=str(exc)) from exc
    for name, error in summary["failures"].items():
        context.log.warning(f"source {name} failed: {error}")
    return dg.MaterializeResult(
        metadata={
            "sources": dg.MetadataValue.md(sources_markdown(summary["sources"])),
            "files": sum(summary["files"].values()),
            "bytes": summary["bytes"],
            "failed_sources": len(summary["failures"]),
            "failures": dg.MetadataValue.json(summary["failures"]),
            "index": dg.MetadataValue.path(str(layout.raw_index)),
        }
    )
